"""The CDML embedding network: content features → unit-norm embedding.

- early fusion: concatenate the modalities → FC layers (ReLU, dropout) → linear → embedding;
- late fusion: one FC tower per modality, each ending in an `embedding_dim` linear layer; the
  towers' outputs are multiplied element-wise → embedding.
Both end with L2 normalisation, so squared distances lie in [0, 4] and cosine = 1 − d²/2.

An artifact is `model.pt` (state_dict) + `model.json` (architecture), loadable with `load_model`
without any training code.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

__all__ = ["CDMLNet", "ModelSpec", "load_model", "save_model"]


@dataclass(frozen=True)
class ModelSpec:
    modality_dims: dict[str, int]
    fusion: str = "early"  # early | late
    hidden: list[int] = field(default_factory=lambda: [512])
    embedding_dim: int = 128
    dropout: float = 0.1


def _mlp(in_dim: int, hidden: list[int], out_dim: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class CDMLNet(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        if spec.fusion not in ("early", "late"):
            raise ValueError(f"fusion must be 'early' or 'late', got {spec.fusion!r}")
        self.spec = spec
        self.names = list(spec.modality_dims)
        if spec.fusion == "early":
            total = sum(spec.modality_dims.values())
            self.net = _mlp(total, spec.hidden, spec.embedding_dim, spec.dropout)
        else:
            self.towers = nn.ModuleDict(
                {
                    n: _mlp(d, spec.hidden, spec.embedding_dim, spec.dropout)
                    for n, d in spec.modality_dims.items()
                }
            )

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.spec.fusion == "early":
            out = self.net(torch.cat([inputs[n] for n in self.names], dim=1))
        else:
            out = self.towers[self.names[0]](inputs[self.names[0]])
            for name in self.names[1:]:
                out = out * self.towers[name](inputs[name])
        return nn.functional.normalize(out, dim=1)


def save_model(model: CDMLNet, directory: str, extra: dict | None = None) -> None:
    os.makedirs(directory, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(directory, "model.pt"))
    with open(os.path.join(directory, "model.json"), "w") as handle:
        json.dump({"spec": asdict(model.spec), **(extra or {})}, handle, indent=2)


def load_model(directory: str, map_location: str = "cpu") -> CDMLNet:
    """Rebuild the network from `model.json` and load `model.pt` (eval mode)."""
    with open(os.path.join(directory, "model.json")) as handle:
        spec = ModelSpec(**json.load(handle)["spec"])
    model = CDMLNet(spec)
    model.load_state_dict(torch.load(os.path.join(directory, "model.pt"), map_location=map_location))
    return model.eval()
