"""The compute units a dense model declares, for the compute policies applied outside it
(`distributed/parallelize.py`: bf16, activation recomputation, FSDP2 sharding).

Every dense model of `models/` has `compute_units() -> ComputeUnits`, naming its own submodules by reference.
The policies read only this, never attribute names or model types, so renaming a submodule either updates
the declaration or fails loudly (AttributeError) — it cannot silently change what runs in bf16 or is
recomputed (tests/distributed/test_parallelize.py renames every submodule of every model to check it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

RECOMPUTE_UNITS = ("inner_trans", "cross", "self")


@dataclass
class ComputeUnits:
    """A dense model's submodules by role; `tokens`, `attention`, `ffn` and `head` are the names of `parallel.bf16`
    (config.py), `recompute` is keyed by the modes of `parallel.recompute`. A role the model lacks stays empty."""

    tokens: list[nn.Module] = field(default_factory=list)  # behaviour / candidate / user token builders
    attention: list[nn.Module] = field(default_factory=list)  # attention blocks (with their FFNs inside)
    ffn: list[nn.Module] = field(default_factory=list)  # the FFNs (inside attention blocks: their own policy)
    head: list[nn.Module] = field(default_factory=list)  # the prediction head
    # FSDP2 units: `fully_shard` on each (in this order), then on the dense network as the root
    shard: list[nn.Module] = field(default_factory=list)
    # what each `parallel.recompute` mode recomputes in backward, by mode: "inner_trans" (InnerTrans inside the
    # token merge), "cross" (the cross-causal first attention layer), "self" (the self-attention layers); "all"
    # recomputes every one of them
    recompute: dict[str, list[nn.Module]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.recompute) - set(RECOMPUTE_UNITS)
        if unknown:
            raise ValueError(f"recompute units {sorted(unknown)}: expected some of {list(RECOMPUTE_UNITS)}")

    def precision(self, name: str) -> list[nn.Module]:
        """The modules behind a `parallel.bf16` name."""
        return getattr(self, name)

    def recomputed(self, mode: str) -> list[nn.Module]:
        """The modules `parallel.recompute=mode` recomputes."""
        names = RECOMPUTE_UNITS if mode == "all" else (mode,)
        return [m for name in names for m in self.recompute.get(name, [])]
