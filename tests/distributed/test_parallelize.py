"""Compute policies applied outside the model (distributed/parallelize.py): activation recomputation gives
the same gradients and holds fewer activations for backward; bf16 runs the named components in bf16 and
keeps norms and the head in fp32; bf16 + recomputation + FSDP2 train through the Trainer."""

import functools
import json
import math
from collections import Counter

import pytest
import torch
from longer_inputs import DIMS, make_inputs, make_model
from test_config import QUICKSTART
from torch._dynamo.utils import counters
from torch.autograd.graph import saved_tensors_hooks
from torch.utils.checkpoint import set_checkpoint_early_stop

from longer_train.config import ConfigError, ModelConfig, load_config
from longer_train.distributed import parallelize
from longer_train.distributed.parallelize import apply_precision, apply_recompute, compute_units
from longer_train.distributed.process_group import destroy_distributed
from longer_train.models.longer import Longer
from longer_train.models.ranking import DENSE_MODELS
from longer_train.trainer import Trainer

LENGTHS = [64, 37, 0, 5, 64, 20]


def _grads_and_saved_bytes(model) -> tuple[dict[str, torch.Tensor], int]:
    """Input and parameter gradients of one backward, and the bytes autograd kept for it."""
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    x = make_inputs(LENGTHS)
    x.events.requires_grad_(True)
    with saved_tensors_hooks(pack, lambda t: t):
        logits = model(x)
    logits.square().sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    grads["events"] = x.events.grad.clone()
    return grads, saved


@pytest.mark.parametrize("mode", ["inner_trans", "cross", "self", "all"])
def test_recompute_same_gradients_less_activation_memory(mode):
    reference, saved_none = _grads_and_saved_bytes(make_model("inner_trans").train())
    model = make_model("inner_trans").train()
    apply_recompute(model, mode)
    grads, saved = _grads_and_saved_bytes(model)
    print(f"recompute={mode}: activations kept for backward {saved / 1024:.0f} KiB vs {saved_none / 1024:.0f} KiB")
    assert saved < saved_none
    for name, grad in reference.items():
        torch.testing.assert_close(grads[name], grad, rtol=0, atol=0, msg=name)


def test_recompute_of_a_missing_component_is_a_config_error():
    with pytest.raises(ConfigError, match="parallel.recompute.*inner_trans"):
        apply_recompute(make_model("concat"), "inner_trans")


def test_bf16_components_run_in_bf16_norms_and_head_in_fp32():
    model = make_model("inner_trans").train()
    apply_precision(model, ["attention", "ffn"], "cpu")
    dtypes: dict[str, torch.dtype] = {}
    for name, module in model.named_modules():
        if name in ("attention.cross.q", "attention.cross.ffn.up", "attention.cross.norm1", "head.net.0",
                    "merge.inner.qkv", "tokens"):
            module.register_forward_hook(lambda m, i, o, name=name: dtypes.__setitem__(name, o.dtype))
    logits = model(make_inputs(LENGTHS))
    logits.sum().backward()
    assert dtypes == {
        "attention.cross.q": torch.bfloat16, "attention.cross.ffn.up": torch.bfloat16,
        "merge.inner.qkv": torch.bfloat16, "attention.cross.norm1": torch.float32,
        "head.net.0": torch.float32, "tokens": torch.float32,
    }
    assert logits.dtype == torch.float32
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    reference = make_model("inner_trans").train()(make_inputs(LENGTHS))
    torch.testing.assert_close(logits, reference, rtol=0.05, atol=0.05)  # bf16 rounding, not a different model


def test_bf16_recompute_and_fsdp_train_through_the_trainer(tiny_data, tmp_path):
    cfg = load_config(QUICKSTART, [
        f"data.root={tiny_data}", "data.max_len=64", "data.batch_size=64", "data.num_workers=0",
        "train.max_steps=30", "train.eval_every=0", "train.log_every=1", "train.checkpoint=false",
        "optim.warmup_steps=5", f"train.output_dir={tmp_path}", "train.run_name=bf16",
        f"train.runs_table={tmp_path}/r.jsonl", "logging.wandb_mode=disabled", "train.progress_bar=false",
        "parallel.bf16=[tokens,attention,ffn,head]", "parallel.recompute=all", "parallel.dense=fsdp",
        "model.merge=inner_trans",
    ])
    try:
        summary = Trainer(cfg).train()
    finally:
        destroy_distributed()
    lines = [json.loads(line) for line in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["train/loss"] for row in lines if "train/loss" in row]
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    print(f"bf16 + recompute + fsdp: test AUC {summary['test_auc']:.4f}")
    assert summary["test_auc"] > 0.55, summary  # it learns: chance is 0.5


# every dense model, each with all the parts it can have (InnerTrans, the candidate match with its readout)
SETTINGS = dict(token_dim=8, head_dim=4, merge="inner_trans", merge_k=4, num_queries=3, num_self_layers=2,
                head_hidden=[16], din_hidden=[12, 6], twin_top_k=10, hstu_layers=2, inner_trans_heads=2)


def _dense(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return DENSE_MODELS[name](ModelConfig(name=name, **SETTINGS), DIMS).train()


BF16 = ("attention", "ffn")  # tokens and head stay fp32, so the test sees both sides


def _policies(model: torch.nn.Module) -> dict[str, tuple[torch.dtype, int]]:
    """Apply bf16 to the model's attention and FFNs (those it has) and recompute everything it can, then
    observe, for every Linear (by path), the dtype of its output and how often backward ran it again, per run
    of the forward (1: recomputed; a Linear may run more than once per forward, e.g. for the user side and for
    the candidates' rows). Observed, not read from the policy code: what a rename must not change."""
    units = compute_units(model)
    apply_precision(model, [n for n in BF16 if units.precision(n)], "cpu")
    if units.recomputed("all"):
        apply_recompute(model, "all")
    dtypes: dict[str, set[torch.dtype]] = {}
    calls: Counter = Counter()

    def observe(module, inputs, output, path):
        dtypes.setdefault(path, set()).add(output.dtype)
        calls[path] += 1

    for path, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(functools.partial(observe, path=path))
    with set_checkpoint_early_stop(False):  # a recomputed block reruns every layer (not only those backward needs)
        logits = model(make_inputs(LENGTHS))
        forward = dict(calls)
        logits.sum().backward()
    assert all(len(d) == 1 for d in dtypes.values()), dtypes  # one dtype per Linear, whichever call
    return {p: (d.pop(), calls[p] / forward[p] - 1) for p, d in dtypes.items()}


def _declared(model: torch.nn.Module) -> tuple[set[str], set[str]]:
    """Paths of the Linears inside the declared bf16 (`BF16`) units and inside the declared recompute units."""
    units = compute_units(model)
    inside = {id(m) for name in BF16 for unit in units.precision(name) for m in unit.modules()}
    recomputed = {id(m) for unit in units.recomputed("all") for m in unit.modules()}
    linears = [(p, m) for p, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    return {p for p, m in linears if id(m) in inside}, {p for p, m in linears if id(m) in recomputed}


@pytest.mark.parametrize("name", sorted(DENSE_MODELS))
def test_policies_act_on_exactly_the_declared_units(name):
    """parallelize.py reads the model's compute_units() and nothing else: the Linears that run in bf16 are
    those inside the declared units, the recomputed ones those inside the declared recompute units."""
    bf16, recomputed = _declared(_dense(name))
    seen = _policies(_dense(name))
    assert seen, name
    assert {p for p, (dtype, _) in seen.items() if dtype == torch.bfloat16} == bf16
    assert {p for p, (_, again) in seen.items() if again == 1} == recomputed
    assert all(again in (0, 1) for _, again in seen.values())
    if name not in ("no_sequence", "sum_pooling"):  # the models with attention
        assert bf16 and not any(p.startswith(("tokens.", "head.")) for p in bf16)
    if name in ("longer", "hstu"):
        assert recomputed


def _wrappers(model: torch.nn.Module) -> dict[str, list[str]]:
    """Apply the policies as `_policies` does and list, per module path, the wrappers installed on its forward,
    outermost first: "bf16", "fp32" (autocast off) or "recompute". Read without running the model."""
    units = compute_units(model)
    apply_precision(model, [n for n in BF16 if units.precision(n)], "cpu")
    if units.recomputed("all"):
        apply_recompute(model, "all")
    found = {}
    for path, module in model.named_modules():
        forward, tags = module.__dict__.get("forward"), []
        # parallelize._wrap_forward installs partial(wrapper, inner), flattened by functools.partial into
        # partial(_autocast_forward, device, bf16, inner) or partial(_recompute_forward, inner)
        while isinstance(forward, functools.partial):
            if forward.func.__name__ == "_autocast_forward":
                tags.append("bf16" if forward.args[1] else "fp32")
            else:
                assert forward.func.__name__ == "_recompute_forward", forward.func
                tags.append("recompute")
            forward = forward.args[-1]
        if tags:
            found[path] = tags
    return found


@pytest.mark.parametrize("name", sorted(DENSE_MODELS))
def test_renaming_a_submodule_cannot_silently_change_the_policies(name):
    """Rename each direct submodule of each dense model (as a refactoring would, the model's own code aside):
    applying the policies then either wraps the very same modules the same way (paths compared with the
    rename undone) or fails loudly, naming the submodule. Attribute-name probing, as parallelize.py did
    before models declared their units, fails this: renaming Longer's `merge` silently dropped its
    InnerTrans from `recompute=all`."""
    reference = _wrappers(_dense(name))
    assert any("recompute" in tags for tags in reference.values()) == (name in ("longer", "hstu"))
    children = [child for child, _ in _dense(name).named_children()]
    assert children
    for child in children:
        model = _dense(name)
        model.add_module(f"{child}_renamed", model._modules.pop(child))
        try:
            found = _wrappers(model)
        except AttributeError as err:
            assert child in str(err), err  # loud, and names what is missing
            continue
        restored = {(child + path[len(child) + 8:] if path.split(".")[0] == f"{child}_renamed" else path): tags
                    for path, tags in found.items()}
        assert restored == reference, child



def _train_losses(tiny_data, tmp_path, name: str, *overrides: str) -> tuple[list[float], list[tuple[int, int]]]:
    """Per-step training losses of one epoch on the tiny data, and each training batch's (events, rows)."""
    cfg = load_config(QUICKSTART, [
        f"data.root={tiny_data}", "data.max_len=64", "data.batch_size=512", "data.num_workers=0",
        "train.eval_every=0", "train.log_every=1", "train.checkpoint=false", "train.metrics_window=0",
        f"train.output_dir={tmp_path}", f"train.run_name={name}", f"train.runs_table={tmp_path}/r.jsonl",
        "logging.wandb_mode=disabled", "train.progress_bar=false", *overrides,
    ])
    sizes = []

    def record(module, args) -> None:
        if torch.is_grad_enabled():  # training steps, not evaluation
            sizes.append(tuple(args[0].events.shape[:1] + args[0].lengths.shape))

    try:
        trainer = Trainer(cfg)
        next(m for m in trainer.model.modules() if isinstance(m, Longer)).register_forward_pre_hook(record)
        trainer.train()
    finally:
        destroy_distributed()
    lines = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return [row["train/loss"] for row in lines if "train/loss" in row], sizes


def test_compile_trains_to_eager_losses_with_one_compile(tiny_data, tmp_path, monkeypatch):
    """parallel.compile: the same per-step losses as eager, and one compile for every batch of the epoch,
    whose event counts differ and whose last batch has fewer rows (the batch sizes are symbolic from the
    first compile), with no graph break (the host sync is outside the dense model). The backend is aot_eager
    (what torch.compile captures, the backward through AOTAutograd, run without Inductor's C++ compile,
    which takes minutes on a test machine)."""
    eager, _ = _train_losses(tiny_data, tmp_path, "eager")
    monkeypatch.setattr(parallelize, "apply_compile", functools.partial(parallelize.apply_compile, backend="aot_eager"))
    torch._dynamo.reset()
    counters.clear()
    compiled, sizes = _train_losses(tiny_data, tmp_path, "compiled", "parallel.compile=true")
    graphs = counters["stats"]["unique_graphs"]
    print(f"compile: {len(compiled)} steps, (events, rows) per batch {sizes}, graphs {graphs}")
    assert len(compiled) == len(eager) == len(sizes) >= 5
    assert len({n for n, _ in sizes}) == len(sizes) and len({b for _, b in sizes}) == 2  # recompiles would show
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=0)
    assert graphs == 1 and not counters["graph_break"]


def test_compile_recompiles_once_when_the_longest_history_changes():
    """The batch's longest history, counted on the host (DenseInputs.pad_to), sizes the padded sequences: the
    first batch compiles with it fixed, the first batch with another longest history compiles again with it
    symbolic, and no later batch compiles (the `eager` backend: dynamo's capture and guards, nothing compiled)."""
    torch._dynamo.reset()
    counters.clear()
    model = make_model("inner_trans").train()
    parallelize.apply_compile(model, backend="eager")
    batches = [[40, 37, 0, 5, 33, 20], [64, 9, 30, 12, 50, 20], [17, 25, 3, 30], [57, 1, 0, 44, 60, 31, 22], [12, 26]]
    graphs = []
    for lengths in batches:
        x = make_inputs(lengths)
        x.pad_to = max(lengths)
        model(x).sum().backward()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs == [1, 2, 2, 2, 2] and not counters["graph_break"]
