"""The exported programs of the whole scorer (embedding lookups included, raw ids in) give the training
forward's probabilities for every Table 1 model, for batch sizes, history lengths, user-id counts and candidate counts
other than the ones they were exported with, and survive save/load."""

import subprocess
import sys

import pytest
import torch
from serve_models import TABLE1, make_scorer, raw_requests

from longer_train.serve.export import export_programs, save_programs


@pytest.mark.parametrize("name, overrides", [*((name, ()) for name in TABLE1),
                                             ("longer", ("model.stream_tokens=true",))])
def test_exported_programs_match_the_training_forward(name, overrides, synthetic_root, tmp_path):
    scorer = make_scorer(name, synthetic_root, overrides)
    save_programs(export_programs(scorer.lookup, scorer.dense, scorer.cfg.data.max_len, scorer.dense_width), tmp_path)
    prefill = torch.export.load(tmp_path / "prefill.pt2").module()
    score = torch.export.load(tmp_path / "score.pt2").module()
    ids, eager = raw_requests(scorer, synthetic_root, lengths=[0, 3, 17, 64, 40], candidates=7)
    state = prefill(ids["sequence"], ids["lengths"], ids["time_diff"], ids["user"], ids["dense"])
    torch.testing.assert_close(score(ids["candidates"], *state), eager, atol=1e-5, rtol=0)


def test_exported_programs_run_with_torch_alone(synthetic_root, tmp_path):
    """A fresh interpreter that imports torch only (not longer_train, torchrec or fbgemm) loads and runs them."""
    scorer = make_scorer("longer", synthetic_root)
    save_programs(export_programs(scorer.lookup, scorer.dense, scorer.cfg.data.max_len, scorer.dense_width), tmp_path)
    ids, expected = raw_requests(scorer, synthetic_root, lengths=[0, 9, 64], candidates=2)
    torch.save(ids, tmp_path / "ids.pt")
    script = """
import sys, torch
folder = sys.argv[1]
ids = torch.load(folder + "/ids.pt")
prefill = torch.export.load(folder + "/prefill.pt2").module()
score = torch.export.load(folder + "/score.pt2").module()
state = prefill(ids["sequence"], ids["lengths"], ids["time_diff"], ids["user"], ids["dense"])
torch.save(score(ids["candidates"], *state), folder + "/scores.pt")
assert not [m for m in sys.modules if m.split(".")[0] in ("longer_train", "torchrec", "fbgemm_gpu")]
"""
    subprocess.run([sys.executable, "-I", "-c", script, str(tmp_path)], check=True, cwd=tmp_path)
    torch.testing.assert_close(torch.load(tmp_path / "scores.pt"), expected, atol=1e-5, rtol=0)
