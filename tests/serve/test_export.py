"""The exported prefill and score programs give the eager model's scores, for batch sizes, history lengths
and candidate counts other than the ones they were exported with, and survive save/load."""

import dataclasses

import torch
from longer_inputs import DIMS, make_inputs, make_model

from longer_train.serve import prefill, score
from longer_train.serve.export import export_programs, save_programs


def test_exported_programs_match_eager(merge, tmp_path):
    model = make_model(merge, num_queries=3)
    example = make_inputs([5, 64, 12])
    prefill_program, score_program = export_programs(model, example, torch.randn(3, 4, DIMS.candidate), capacity=64)
    save_programs((prefill_program, score_program), tmp_path)
    prefill_loaded = torch.export.load(tmp_path / "prefill.pt2").module()
    score_loaded = torch.export.load(tmp_path / "score.pt2").module()

    users = make_inputs([0, 3, 17, 64, 40], seed=9)  # other sizes, an empty history, the full capacity
    candidates = torch.randn(5, 7, DIMS.candidate)
    eager = score(model, prefill(model, users), candidates)
    cache = prefill_loaded(users.events, users.lengths, users.time_diff, users.user, users.dense)
    torch.testing.assert_close(score_loaded(candidates, *cache), eager, atol=1e-5, rtol=0)
    with torch.no_grad():
        full = model(dataclasses.replace(users, candidate=candidates[:, 2]))
    torch.testing.assert_close(eager[:, 2], full, atol=1e-5, rtol=0)
