"""The dispatcher's choices: `auto` is SDPA on CPU, `triton` explains what it needs when it cannot
run, and without triton installed `reference` and `auto` still work."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from longer_train.kernels import resolve_impl


def test_auto_is_sdpa_on_cpu_and_unknown_names_fail():
    assert resolve_impl("auto", torch.zeros(1)) == "sdpa"
    assert resolve_impl("reference", torch.zeros(1)) == "reference"
    with pytest.raises(ValueError, match="model.attention_impl must be one of"):
        resolve_impl("flash", torch.zeros(1))


def test_without_triton_or_interpreter_the_errors_say_what_is_missing():
    code = textwrap.dedent("""
        import sys
        import pytest, torch
        from longer_train.kernels import hybrid_attention
        q = torch.randn(2, 1, 3, 16)
        pad = torch.tensor([0, 2])
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            hybrid_attention(q, q, q, pad, impl="triton")
        sys.modules["triton"] = None  # triton not installed
        with pytest.raises(RuntimeError, match="needs the `triton` package"):
            hybrid_attention(q, q, q, pad, impl="triton")
        out = hybrid_attention(q, q, q, pad, impl="auto")
        assert out.shape == q.shape
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)



def test_an_interpreter_too_old_for_this_numpy_is_named_not_a_bare_type_error():
    """Triton 3.6's interpreter with numpy >= 2.4 fails inside the kernel with a TypeError about 0-dimensional
    arrays (triton-lang/triton#9171), wrapped in an InterpreterError; the launcher's CPU path turns that into an
    error that says what to install, and lets any other error through."""
    pytest.importorskip("triton")
    from longer_train.kernels.tile_ops import explain_interpreter_errors

    bug = TypeError("only 0-dimensional arrays can be converted to Python scalars")
    for raised_by_interpreter in (bug, RuntimeError(repr(bug))):
        with pytest.raises(RuntimeError, match=r"numpy<2.4.*make setup") as raised:
            with explain_interpreter_errors():
                raise raised_by_interpreter
        assert raised.value.__cause__ is raised_by_interpreter
    with pytest.raises(ValueError, match="something else"):
        with explain_interpreter_errors():
            raise ValueError("something else")
