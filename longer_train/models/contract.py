"""The one contract every dense model of `models/` meets (`DenseModel`), and the only way the rest of the package
reaches a model: the trainer, `distributed/` and `serve/` call these members and nothing else, never an attribute
of a particular model or its name (tests/test_layering.py checks their imports; tests/models/test_contract.py
checks every registered model against this protocol). Which model a config names is the registry's business
(`ranking.py`: `DENSE_MODELS`, `build_model`, `comparison_flops`)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from .inputs import DenseDims, DenseInputs
from .units import ComputeUnits
from .user_state import ServableModel


@runtime_checkable
class DenseModel(ServableModel, Protocol):
    """A dense ranking network over one batch's embeddings (`DenseInputs`), plus serving's two halves
    (`ServableModel`: `prefill`, `score`, `serving`)."""

    dims: DenseDims  # the widths of its inputs (models/inputs.py)

    def forward(self, x: DenseInputs) -> Tensor:
        """Logits [B] of the batch's (user, history, candidate) rows: the training forward."""
        ...

    def flops(self, lengths: list[int]) -> int:
        """Forward FLOPs of a batch with these history lengths (matmuls, as FlopCounterMode counts them)."""
        ...

    def compute_units(self) -> ComputeUnits:
        """Its submodules by role, for bf16, recomputation and FSDP2 (models/units.py)."""
        ...
