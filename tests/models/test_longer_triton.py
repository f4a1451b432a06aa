"""The dense LONGER model gives the same logits and gradients with `attention_impl=triton` (the Triton
kernels; on CPU under the Triton interpreter) as with `reference`, on a ragged batch with empty rows."""

import dataclasses
from pathlib import Path
from unittest import mock

import pytest
import torch
from longer_inputs import make_inputs, make_model

pytest.importorskip("triton")

from longer_train.kernels import group_attention_triton, hybrid_attention_triton  # noqa: E402

RAGGED = [0, 1, 5, 13, 30, 64, 7]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _logits_and_grads(merge: str, impl: str, **overrides):
    overrides = {"length_chunks": 1, **overrides}  # one pass over the batch: the kernel calls below count layers
    model = make_model(merge, attention_impl=impl, **overrides).train().to(DEVICE)  # same seed: same weights
    x = make_inputs(RAGGED)
    x = dataclasses.replace(x, **{f.name: getattr(x, f.name).to(DEVICE) for f in dataclasses.fields(x)
                                  if isinstance(getattr(x, f.name), torch.Tensor)})
    x.events.requires_grad_(True)
    logits = model(x)
    weights = torch.linspace(-1.0, 2.0, logits.shape[0], device=DEVICE)
    (logits * weights).sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return logits, x.events.grad, grads


def _spy(module, name: str):
    """Counts calls of module.name (the dispatcher looks it up there on every call)."""
    return mock.patch.object(module, name, wraps=getattr(module, name))


def test_triton_model_matches_reference(merge):
    ref_logits, ref_events, ref_grads = _logits_and_grads(merge, "reference")
    with _spy(hybrid_attention_triton, "hybrid_attention_triton") as hybrid, \
            _spy(group_attention_triton, "group_attention_triton") as group:
        logits, events, grads = _logits_and_grads(merge, "triton")
    assert hybrid.call_count == 3  # cross-causal + 2 self-causal layers ran the kernel
    assert group.call_count == (1 if merge == "inner_trans" else 0)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(events, ref_events, atol=1e-5, rtol=1e-4)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_triton_model_in_length_chunks_matches_the_whole_batch_reference():
    """`model.length_chunks` trims each chunk's leading padding, so the kernel sees other shapes and paddings
    than the whole batch's: the same logits and gradients."""
    ref_logits, ref_events, ref_grads = _logits_and_grads("concat", "reference")
    with _spy(hybrid_attention_triton, "hybrid_attention_triton") as hybrid:
        logits, events, grads = _logits_and_grads("concat", "triton", length_chunks=4)
    assert hybrid.call_count > 3 and hybrid.call_count % 3 == 0  # the 3 layers once per chunk
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(events, ref_events, atol=1e-5, rtol=1e-4)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("rule", ["uniform", "learnable", "recent_uniform"])
def test_gathered_query_rules_fall_back_to_the_reference_on_the_cross_layer_only(rule, monkeypatch, caplog):
    """The Triton kernel takes bottom-right aligned queries only: under `auto` where it would run, a rule other
    than `recent` runs the cross-causal layer on the reference (the reason logged), the self-causal layers still
    on the kernel, with the reference model's logits and gradients."""
    from longer_train.kernels import dispatch

    ref_logits, ref_events, ref_grads = _logits_and_grads("concat", "reference", query_selection=rule)
    resolve = dispatch.resolve_impl
    monkeypatch.setattr(dispatch, "resolve_impl", lambda impl, t: "triton" if impl == "auto" else resolve(impl, t))
    monkeypatch.setattr(dispatch, "_logged", set())
    with _spy(hybrid_attention_triton, "hybrid_attention_triton") as hybrid, caplog.at_level("WARNING"):
        logits, events, grads = _logits_and_grads("concat", "auto", query_selection=rule)
    assert hybrid.call_count == 2  # the self-causal layers
    assert "bottom-right aligned queries only" in caplog.text and caplog.text.count("attention_impl=auto") == 1
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(events, ref_events, atol=1e-5, rtol=1e-4)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_an_explicit_triton_impl_refuses_gathered_queries():
    from longer_train.kernels import hybrid_attention

    from longer_train.config import ConfigError, load_config

    q = torch.randn(2, 1, 3, 16)
    with pytest.raises(NotImplementedError, match="query_selection=recent"):
        hybrid_attention(q, q, q, torch.tensor([0, 1]), impl="triton", q_pos=torch.tensor([[0, 1, 2], [1, 1, 2]]))
    with pytest.raises(ConfigError, match="model.query_selection.*Triton"):
        quickstart = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
        load_config(quickstart, ["model.query_selection=uniform", "model.attention_impl=triton"])
