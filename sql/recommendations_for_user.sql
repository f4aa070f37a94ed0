-- A user's recommendations with titles and genres where known.
-- Parameters: ${db}, ${user_id} (e.g. 1m_1 for MovieLens-1M).
SELECT r.rank,
       r.video_id,
       COALESCE(m.title, r.video_id) AS title,
       m.genres,
       ROUND(r.score, 3) AS mean_cosine_to_history
FROM ${db}.user_recommendations r
LEFT JOIN ${db}.video_metadata m ON m.video_id = r.video_id
WHERE r.user_id = '${user_id}'
ORDER BY r.rank
