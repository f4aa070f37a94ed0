-- Videos most similar to one video (embedding cosine), with titles where known.
-- Parameters: ${db} (e.g. cdml or main.cdml), ${video_id} (e.g. Toy Story (1995)).
SELECT n.rank,
       n.neighbor_id,
       COALESCE(m.title, n.neighbor_id) AS title,
       ROUND(n.score, 3) AS cosine,
       n.model_version
FROM ${db}.video_neighbors n
LEFT JOIN ${db}.video_metadata m ON m.video_id = n.neighbor_id
WHERE n.video_id = '${video_id}'
ORDER BY n.rank
