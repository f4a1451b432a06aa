"""One entry point per op: picks the implementation named in the config (`model.attention_impl`).

- `reference`: the readable PyTorch code in `reference.py` (any device).
- `triton`: the Triton kernels (`hybrid_attention_triton.py`, `group_attention_triton.py`). CUDA tensors,
  or CPU tensors under the Triton interpreter (`TRITON_INTERPRET=1`, set before the first Triton call; the
  tests do this). Raises a clear error if triton is not installed.
- `sdpa`: `F.scaled_dot_product_attention` (`sdpa.py`; any device): SDPA's causal modes where the layout
  allows, else the reference's exact masks; the candidate row under the candidate match (a score bias,
  attention probabilities returned) stays on the reference.
- `auto`: `triton` for CUDA tensors when triton is installed, `sdpa` for CPU tensors, `reference` otherwise;
  also `reference` for a call the Triton kernel does not take (hybrid attention with gathered query positions,
  i.e. a `model.query_selection` other than `recent`), with the reason logged once per process. On CPU SDPA
  took about the reference's time and less memory, and the Transformer baseline a fraction of both
  (docs/kernels.md, "Attention on CPU").

Triton is imported only when a Triton implementation is chosen, so `reference`, `sdpa` and `auto` on CPU need
no triton at all.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import Tensor

from .reference import candidate_attention_reference, group_attention_reference, hybrid_attention_reference
from .sdpa import group_attention_sdpa, hybrid_attention_sdpa

IMPLS = ("auto", "reference", "triton", "sdpa")
log = logging.getLogger(__name__)
_logged: set[str] = set()


def _fall_back(reason: str) -> str:
    """`auto` keeps the reference for a call the kernel does not take; the reason is logged once."""
    if reason not in _logged:
        _logged.add(reason)
        log.warning("attention_impl=auto uses the PyTorch reference, not Triton: %s", reason)
    return "reference"


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_impl(impl: str, tensor: Tensor) -> str:
    """The concrete implementation (`reference`, `triton` or `sdpa`) that `impl` means for `tensor`'s device."""
    if impl not in IMPLS:
        raise ValueError(f"model.attention_impl must be one of {list(IMPLS)}, got {impl!r}")
    if impl == "auto":
        if not tensor.is_cuda:
            return "sdpa"
        return "triton" if triton_available() else "reference"
    if impl == "triton":
        if not triton_available():
            raise RuntimeError("model.attention_impl=triton needs the `triton` package, which is not installed")
        if not tensor.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(
                "model.attention_impl=triton got CPU tensors: run on CUDA, or set TRITON_INTERPRET=1 before the "
                "first Triton call to use the (slow) Triton interpreter"
            )
    return impl


GATHERED_QUERIES = (
    "the Triton hybrid-attention kernel takes bottom-right aligned queries only (model.query_selection=recent); "
    "queries gathered at per-row positions (uniform, learnable, recent_uniform) run on the reference"
)


def hybrid_attention(
    q: Tensor, k: Tensor, v: Tensor, num_pad: Tensor, impl: str = "auto", q_pos: Tensor | None = None
) -> Tensor:
    """Causal attention with left padding: the queries are the last Lq positions (bottom-right aligned), or sit
    at the per-row key positions `q_pos` [B, Lq]; see `reference.hybrid_attention_reference`."""
    chosen = resolve_impl(impl, q)
    if chosen == "triton" and q_pos is not None:
        if impl == "triton":
            raise NotImplementedError(f"model.attention_impl=triton: {GATHERED_QUERIES}; use attention_impl auto")
        chosen = _fall_back(GATHERED_QUERIES)
    if chosen == "triton":
        from .hybrid_attention_triton import hybrid_attention_triton

        return hybrid_attention_triton(q, k, v, num_pad)
    if chosen == "sdpa":
        return hybrid_attention_sdpa(q, k, v, num_pad, q_pos)
    return hybrid_attention_reference(q, k, v, num_pad, q_pos)


def candidate_attention(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, num_pad: Tensor, k_self: Tensor, v_self: Tensor, impl: str = "auto",
    bias: Tensor | None = None, return_probs: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Candidates against a user's KV cache plus themselves; see `reference.candidate_attention_reference`.
    The Triton kernel is forward-only (KV-cached scoring); a call that needs gradients (the candidate rows in
    training), or has a score `bias` or `return_probs` (LONGER's candidate match), runs the reference: one
    query row per candidate is a matrix-vector product, which the kernel would not speed up."""
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k_cache, v_cache, k_self, v_self))
    if bias is None and not return_probs and not needs_grad and resolve_impl(impl, q) == "triton":
        from .hybrid_attention_triton import candidate_attention_triton

        return candidate_attention_triton(q, k_cache, v_cache, num_pad, k_self, v_self)
    return candidate_attention_reference(q, k_cache, v_cache, num_pad, k_self, v_self, bias, return_probs)


def group_attention(q: Tensor, k: Tensor, v: Tensor, valid: Tensor, impl: str = "auto") -> Tensor:
    """Attention inside groups of K tokens; see `reference.group_attention_reference`. `auto` keeps the
    reference for group sizes the kernel does not take (K not a power of two)."""
    chosen = resolve_impl(impl, q)
    if chosen == "triton":
        from .group_attention_triton import group_attention_triton, unsupported_reason

        if impl == "triton" or unsupported_reason(q.shape[2]) is None:
            return group_attention_triton(q, k, v, valid)
    if chosen == "sdpa":
        return group_attention_sdpa(q, k, v, valid)
    return group_attention_reference(q, k, v, valid)
