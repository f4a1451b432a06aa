"""Hot ops of LONGER behind one dispatcher each: a readable PyTorch reference (the CPU path and the test
oracle) and, where implemented, a Triton kernel.

Installed as `longer_train.kernels` (see pyproject.toml). Nothing here imports torchrec: the kernels and
their benchmarks must run on a machine with only torch (+ triton).
"""

from .dispatch import AttentionImpl, candidate_attention, group_attention, hybrid_attention, resolve_impl

__all__ = ["AttentionImpl", "candidate_attention", "group_attention", "hybrid_attention", "resolve_impl"]
