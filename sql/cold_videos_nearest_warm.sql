-- For videos nobody has watched (or held out as cold_test), their nearest videos that have
-- viewers: CDML embeds content, so cold videos get neighbours too.
-- Parameters: ${db}, ${limit} (number of cold videos to show).
WITH cold AS (
  SELECT s.video_id
  FROM ${db}.video_splits s
  WHERE s.split = 'cold_test' OR s.users = 0
  ORDER BY s.video_id
  LIMIT ${limit}
)
SELECT c.video_id AS cold_video,
       COALESCE(cm.title, c.video_id) AS cold_title,
       n.rank,
       n.neighbor_id AS warm_neighbor,
       COALESCE(nm.title, n.neighbor_id) AS warm_title,
       ROUND(n.score, 3) AS cosine
FROM cold c
JOIN ${db}.video_neighbors n ON n.video_id = c.video_id
JOIN ${db}.video_splits ns ON ns.video_id = n.neighbor_id AND ns.users > 0
LEFT JOIN ${db}.video_metadata cm ON cm.video_id = c.video_id
LEFT JOIN ${db}.video_metadata nm ON nm.video_id = n.neighbor_id
WHERE n.rank <= 5
ORDER BY c.video_id, n.rank
