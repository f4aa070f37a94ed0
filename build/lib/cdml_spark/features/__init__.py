"""Content features: `ingest` (the ingest_features stage, checks and quarantine), `movielens` (text +
metadata for MovieLens), `text_encoder` (all-MiniLM-L6-v2), `frames` (frame-level inputs, pooled)."""
