"""One entry point per op: picks the implementation named in the config (`model.attention_impl`).

`auto` means the Triton kernel on CUDA tensors once it exists, the PyTorch reference elsewhere. Today only
the reference is implemented, so `auto` resolves to it everywhere.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from .reference import candidate_attention_reference, group_attention_reference, hybrid_attention_reference

AttentionImpl = Literal["auto", "reference"]
_IMPLS = ("auto", "reference")


def resolve_impl(impl: str, tensor: Tensor) -> str:
    """The concrete implementation `impl` means for `tensor`'s device."""
    if impl not in _IMPLS:
        raise ValueError(f"attention implementation must be one of {list(_IMPLS)}, got {impl!r}")
    return "reference"


def hybrid_attention(q: Tensor, k: Tensor, v: Tensor, num_pad: Tensor, impl: str = "auto") -> Tensor:
    """Bottom-right-aligned causal attention with left padding; see `reference.hybrid_attention_reference`."""
    resolve_impl(impl, q)
    return hybrid_attention_reference(q, k, v, num_pad)


def candidate_attention(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, num_pad: Tensor, k_self: Tensor, v_self: Tensor, impl: str = "auto"
) -> Tensor:
    """Candidates against a user's KV cache plus themselves; see `reference.candidate_attention_reference`."""
    resolve_impl(impl, q)
    return candidate_attention_reference(q, k_cache, v_cache, num_pad, k_self, v_self)


def group_attention(q: Tensor, k: Tensor, v: Tensor, valid: Tensor, impl: str = "auto") -> Tensor:
    """Attention inside groups of K tokens; see `reference.group_attention_reference`."""
    resolve_impl(impl, q)
    return group_attention_reference(q, k, v, valid)
