"""Serving: `embed` (batch-embed the catalog), `top_k` (exact and faiss top-K search), `neighbors`
(the video_neighbors table), `recommend` (per-user recommendations)."""
