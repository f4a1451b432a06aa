"""Compute policies applied outside the model (distributed/parallelize.py): activation recomputation gives
the same gradients and holds fewer activations for backward; bf16 runs the named components in bf16 and
keeps norms and the head in fp32; bf16 + recomputation + FSDP2 train through the Trainer."""

import json
import math

import pytest
import torch
from longer_inputs import make_inputs, make_model
from test_config import QUICKSTART
from torch.autograd.graph import saved_tensors_hooks

from longer_train.config import ConfigError, load_config
from longer_train.distributed.parallelize import apply_precision, apply_recompute
from longer_train.distributed.process_group import destroy_distributed
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
                    "merge.inner.qkv", "tokens.mlp.net.2"):
            module.register_forward_hook(lambda m, i, o, name=name: dtypes.__setitem__(name, o.dtype))
    logits = model(make_inputs(LENGTHS))
    logits.sum().backward()
    assert dtypes == {
        "attention.cross.q": torch.bfloat16, "attention.cross.ffn.up": torch.bfloat16,
        "merge.inner.qkv": torch.bfloat16, "attention.cross.norm1": torch.float32,
        "head.net.0": torch.float32, "tokens.mlp.net.2": torch.float32,
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
