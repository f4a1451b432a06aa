"""Compute and parallelism policies applied to a built model from `parallel:` in the config, outside the
model code, in torchtitan's fixed order: mixed precision -> activation recomputation -> torch.compile ->
sharding (TorchRec for the tables, DDP or FSDP2 for the dense layers; `sharding.py`).

Policies are installed by wrapping a module's `forward` in place, so parameter names — and therefore
checkpoints — are the same whatever the policy.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..config import ConfigError, ParallelConfig
from ..models.contract import DenseModel
from ..models.units import ComputeUnits

_NORMS = (nn.LayerNorm, nn.RMSNorm)


def compute_units(dense: DenseModel) -> ComputeUnits:
    """The units the dense model declares (models/units.py), checked to be its own submodules."""
    units = dense.compute_units()
    own = {id(m) for m in dense.modules()}
    declared = [*units.tokens, *units.attention, *units.ffn, *units.head, *units.shard,
                *(m for modules in units.recompute.values() for m in modules)]
    if any(id(m) not in own for m in declared):
        raise ValueError(f"{type(dense).__name__}.compute_units() names a module that is not one of its submodules")
    return units


def _wrap_forward(module: nn.Module, wrapper: Callable) -> None:
    inner = module.forward
    module.forward = functools.wraps(inner)(functools.partial(wrapper, inner))


def _to_fp32(value):
    return value.float() if isinstance(value, Tensor) and value.is_floating_point() else value


def _autocast_forward(device_type: str, bf16: bool, inner: Callable, *args, **kwargs):
    if bf16:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return inner(*args, **kwargs)
    # an fp32 island inside a bf16 region: its inputs may arrive in bf16
    with torch.autocast(device_type, enabled=False):
        return inner(*(_to_fp32(a) for a in args), **{k: _to_fp32(v) for k, v in kwargs.items()})


def apply_precision(dense: nn.Module, bf16: list[str], device_type: str) -> None:
    """Run the named components in bf16 (autocast); norms always run in fp32, as do the embeddings
    (TorchRec tables) and the loss, which live outside `dense`."""
    if not bf16:
        return
    units = compute_units(dense)
    for name in bf16:
        if not units.precision(name):
            raise ConfigError(f"config key 'parallel.bf16': model {type(dense).__name__} has no {name!r} component")
    # innermost first: a block's FFN and norms keep their own policy inside the block's autocast region
    for module in dense.modules():
        if isinstance(module, _NORMS):
            _wrap_forward(module, functools.partial(_autocast_forward, device_type, False))
    for name in ("ffn", "attention", "tokens", "head"):
        for module in units.precision(name):
            _wrap_forward(module, functools.partial(_autocast_forward, device_type, name in bf16))


def _recompute_forward(inner: Callable, *args, **kwargs):
    if not torch.is_grad_enabled():
        return inner(*args, **kwargs)
    return checkpoint(inner, *args, use_reentrant=False, **kwargs)


def recompute_targets(dense: nn.Module, mode: str) -> list[nn.Module]:
    """Modules whose activations `parallel.recompute=mode` recomputes in backward."""
    if mode == "none":
        return []
    units = compute_units(dense)
    targets = units.recomputed(mode)
    if not targets:
        has = [name for name, modules in units.recompute.items() if modules]
        raise ConfigError(
            f"config key 'parallel.recompute': {mode!r} names no module of this model "
            f"({type(dense).__name__} recomputes: {', '.join(has) or 'nothing'})"
        )
    return targets


def apply_recompute(dense: nn.Module, mode: str) -> None:
    for module in recompute_targets(dense, mode):
        _wrap_forward(module, _recompute_forward)


def _mark_batch_dynamic(inputs: Any) -> None:
    """Compile for any batch: dim 0 of every tensor of the dense model's inputs (`DenseInputs`: the packed
    events N, or the rows B) is symbolic from the first compile; the widths stay static, so that Inductor
    specialises its kernels on them. `maybe_`: a batch of 0 or 1 events or rows, sizes that torch.compile
    specialises, is not an error."""
    for field in dataclasses.fields(inputs):
        value = getattr(inputs, field.name)
        if isinstance(value, Tensor) and value.dim():
            torch._dynamo.maybe_mark_dynamic(value, 0)


def _compiled_forward(compiled: Callable, inner: Callable, inputs: Any) -> Tensor:
    if not torch.is_grad_enabled():  # evaluation: a few batches, which would not repay a compile of their own
        return inner(inputs)
    _mark_batch_dynamic(inputs)
    return compiled(inputs)


def apply_compile(dense: nn.Module, backend: str = "inductor") -> None:
    """torch.compile of the dense model's whole forward (with its backward, through AOTAutograd), for the
    training step; evaluation runs eagerly. The embeddings (TorchRec) stay outside. Installed like the other
    policies, so parameter names and checkpoints do not change; applied after bf16 and recomputation, whose
    regions it traces, and before DDP/FSDP2, which wrap the compiled module.

    The dense model's host sync (the batch's longest history, to size the padded sequences) happens outside:
    the loader counts it (`DenseInputs.pad_to`). Recompiles, each once: the first batch whose longest history
    differs from the first batch's (that length is then symbolic), the first whose rows are all full, one whose
    padded history is a single merged token (docs/distributed.md). `backend`: tests use "aot_eager" (no C++
    compile)."""
    _wrap_forward(dense, functools.partial(_compiled_forward, torch.compile(dense.forward, backend=backend)))


def apply_compute_policies(dense: nn.Module, cfg: ParallelConfig, device_type: str) -> None:
    """Precision, then recomputation (so a recomputed forward replays the same autocast regions), then
    torch.compile (which traces those regions)."""
    apply_precision(dense, cfg.bf16, device_type)
    apply_recompute(dense, cfg.recompute)
    if cfg.compile:
        apply_compile(dense)
