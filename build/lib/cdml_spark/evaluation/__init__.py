"""Offline evaluation: `protocols` (time split, user hold-out, held-out truth), `tasks` (retrieval,
recommendation, classification over methods), `metrics` (ranking metrics), `report` (tables and
plots), `run` (the `evaluate` stage)."""
