"""Hot ops of LONGER behind one dispatcher each (`dispatch.py`): a readable PyTorch reference (`reference.py`,
the CPU path and the test oracle) and a Triton kernel (`hybrid_attention_triton.py`,
`group_attention_triton.py`; triton is imported only when one is used). See docs/kernels.md.

Installed as `longer_train.kernels` (see pyproject.toml). Nothing here imports torchrec: the kernels and
their benchmarks must run on a machine with only torch (+ triton).
"""

from .dispatch import candidate_attention, group_attention, hybrid_attention, resolve_impl

__all__ = ["candidate_attention", "group_attention", "hybrid_attention", "resolve_impl"]
