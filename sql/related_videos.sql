-- "Videos like X": one list blending co-watch neighbours (strong where many people watched X) and
-- CDML embedding neighbours (where few or none did), with where each row came from.
-- Parameters: ${db} (e.g. cdml or main.cdml), ${video_id} (e.g. American Beauty (1999)).
SELECT r.rank,
       r.neighbor_id,
       COALESCE(m.title, r.neighbor_id) AS title,
       ROUND(r.score, 3) AS score,
       r.source,
       ROUND(r.cowatch_weight, 2) AS cowatch_weight,
       COALESCE(s.user_days, 0) AS video_support
FROM ${db}.related_videos r
LEFT JOIN ${db}.video_metadata m ON m.video_id = r.neighbor_id
LEFT JOIN ${db}.video_stats s ON s.video_id = r.video_id
WHERE r.video_id = '${video_id}'
ORDER BY r.rank
