"""Transformer pieces shared by LONGER's layers: norms, the GELU FFN, and multi-head projections."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def make_norm(kind: str, dim: int) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim)
    raise ValueError(f"unknown norm {kind!r}; expected 'layernorm' or 'rmsnorm'")


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear with `mult`x expansion."""

    def __init__(self, dim: int, mult: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.up = nn.Linear(dim, dim * mult)
        self.down = nn.Linear(dim * mult, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.down(torch.nn.functional.gelu(self.up(x))))


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """[B, L, H*dh] -> [B, H, L, dh]."""
    b, length, width = x.shape
    return x.view(b, length, num_heads, width // num_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[B, H, L, dh] -> [B, L, H*dh]."""
    b, h, length, dh = x.shape
    return x.transpose(1, 2).reshape(b, length, h * dh)


class MLP(nn.Module):
    """Linear/GELU stack; the last layer has no activation."""

    def __init__(self, in_dim: int, hidden: list[int], out_dim: int) -> None:
        super().__init__()
        dims = [in_dim, *hidden, out_dim]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
