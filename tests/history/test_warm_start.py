"""Warm starts learn from how runs *ended*.

A run that collapsed at the end (best validation loss 0.62, final 1.44) used to vote for its
final lr as if it had gone well, weighted by its best loss, and a diverged one could too: the
suggestion for a family whose best lr is 1e-2 came out at 0.097. Here the history of one zoo
family holds good, collapsed, diverged and chance-level runs, written as real records from
the family's real instances.
"""

from __future__ import annotations

import math
import time
import uuid

import numpy as np
import pytest
import torch

from chuck import zoo
from chuck.history import (
    RunRecord,
    classify_run,
    fingerprint,
    nearest_runs,
    read_history,
    suggest_hyperparameters,
    write_record,
)

FAMILY = "tabular.wine_mlp"
GOOD_LR = 1e-2


def _instance(seed: int):
    task = zoo.get_task(FAMILY)
    cfg = task.sample_config(np.random.default_rng(seed))
    cfg.optimizer = "AdamW"
    torch.manual_seed(cfg.seed)
    inst = task.build(cfg)
    return inst.model, inst.optimizer, cfg.batch_size


def _write(seed: int, start_lr: float, outcome: dict) -> str:
    """A run of instance ``seed`` that started at lr ``start_lr`` and ended 100x lower (chuck's cooldown)."""
    model, opt, batch = _instance(seed)
    rec = RunRecord(
        run_id=uuid.uuid4().hex,
        created=time.time(),
        policy_id="heuristic@1",
        fingerprint=fingerprint(model, opt, batch_size=batch),
        initial={"lr": start_lr, "weight_decay": 0.01, "clip": math.inf},
        final={"lr": start_lr / 100, "weight_decay": 0.01, "clip": math.inf, "lr_mult": 0.01, "wd_mult": 1.0},
        outcome={"initial_train_loss": 1.1, "diverged": False, "steps": 250, **outcome},
        lr={"start": start_lr, "median": start_lr},
    )
    write_record(rec)
    return rec.run_id


def _family_history() -> dict[str, set[str]]:
    good = {
        _write(1, 0.8 * GOOD_LR, {"best_val_loss": 0.55, "final_val_loss": 0.57, "final_train_loss": 0.5}),
        _write(2, GOOD_LR, {"best_val_loss": 0.56, "final_val_loss": 0.58, "final_train_loss": 0.5}),
        _write(3, 1.25 * GOOD_LR, {"best_val_loss": 0.56, "final_val_loss": 0.59, "final_train_loss": 0.52}),
    }
    collapsed = {  # a reported run: a good loss reached, then lost at a far too high lr
        _write(4, 0.83, {"best_val_loss": 0.62, "final_val_loss": 1.44, "final_train_loss": 1.3}),
        _write(5, 0.6, {"best_val_loss": 0.7, "final_val_loss": 1.2, "final_train_loss": 1.1}),
    }
    diverged = {
        _write(6, 3.0, {"diverged": True, "best_val_loss": 0.9, "final_val_loss": math.nan, "final_train_loss": math.nan}),
        _write(7, 2.0, {"best_val_loss": 1.0, "final_val_loss": math.inf, "final_train_loss": math.inf}),
    }
    chance = {  # finished, but at chance level: they stay in, outweighed by the runs that ended well
        _write(8, 0.097, {"best_val_loss": 1.0, "final_val_loss": 1.02, "final_train_loss": 1.05}),
    }
    return {"good": good, "collapsed": collapsed, "diverged": diverged, "chance": chance}


def test_suggestion_follows_the_runs_that_ended_well() -> None:
    runs = _family_history()
    model, opt, batch = _instance(0)  # another instance of the same family
    s = suggest_hyperparameters(model, opt, batch_size=batch)

    assert s.source == "history"
    assert GOOD_LR / 1.5 < s.lr < GOOD_LR * 1.5, s.basis
    failed = runs["collapsed"] | runs["diverged"]
    assert not failed & set(s.runs), "a diverged or collapsed run never votes"
    assert {e["status"] for e in s.excluded} <= {"collapsed", "diverged"} and {e["run_id"] for e in s.excluded} <= failed
    share = dict(zip(s.runs, s.weights))
    assert sum(s.weights) == pytest.approx(1.0)
    assert sum(share.get(r, 0.0) for r in runs["good"]) > 0.9, "the runs that ended well carry the vote"
    # what the suggestion rests on, in numbers and in words
    assert len(s.runs) == len(s.distances) == len(s.weights) and s.distances == sorted(s.distances)
    assert s.distance == s.distances[0] < 1.5, "instance 1 of the family differs from 0 in width, activation and norm"
    assert 1.0 <= s.effective_runs <= len(s.runs)
    assert s.confidence in ("high", "medium", "low") and s.lr_spread >= 0
    assert "fingerprint distance" in s.basis and "0: the same model shape" in s.basis
    assert f"confidence {s.confidence}" in s.basis and str(s) == s.basis
    if s.excluded:
        assert "left out" in s.basis


def test_failed_runs_are_judged_and_left_out_of_the_nearest_runs() -> None:
    runs = _family_history()
    df = read_history()
    status = {row["run_id"]: classify_run(row).status for row in df.iter_rows(named=True)}
    assert {status[r] for r in runs["good"] | runs["chance"]} == {"ok"}
    assert {status[r] for r in runs["collapsed"]} == {"collapsed"}
    assert {status[r] for r in runs["diverged"]} == {"diverged"}
    row = next(r for r in df.iter_rows(named=True) if r["outcome_final_val_loss"] == 1.44)
    assert classify_run(row).reason == "final validation loss 1.44 is 2.3x its best 0.62"

    model, opt, batch = _instance(0)
    fp = fingerprint(model, opt, batch_size=batch)
    near = {row["run_id"] for _, row in nearest_runs(fp, k=None)}
    assert near == runs["good"] | runs["chance"]
    assert len(nearest_runs(fp, k=None, include_failed=True)) == 8


def test_a_history_of_failures_suggests_nothing_and_says_why() -> None:
    _write(4, 0.83, {"best_val_loss": 0.62, "final_val_loss": 1.44, "final_train_loss": 1.3})
    model, opt, batch = _instance(0)
    s = suggest_hyperparameters(model, opt, batch_size=batch)
    assert s.source == "none" and s.lr is None
    assert [e["status"] for e in s.excluded] == ["collapsed"]
    assert "1 nearby run(s) failed" in s.basis and "cold-start" in s.basis


def test_training_loss_above_its_start_is_a_collapse_and_no_loss_is_unknown() -> None:
    base = {"outcome_initial_train_loss": 1.0, "outcome_final_val_loss": math.nan, "outcome_best_val_loss": math.nan}
    assert classify_run({**base, "outcome_final_train_loss": 1.6}).status == "collapsed"
    assert classify_run({**base, "outcome_final_train_loss": 0.4}).status == "ok"
    unknown = classify_run({**base, "outcome_final_train_loss": math.nan})
    assert unknown.status == "unknown" and unknown.final_loss is None and unknown.score is None
    assert classify_run({**base, "outcome_final_train_loss": 0.4}).score == pytest.approx(math.log(0.4))


def test_a_model_that_is_not_a_module_is_refused_by_name() -> None:
    import chuck

    with pytest.raises(TypeError, match="model must be the torch.nn.Module being trained"):
        chuck.suggest_hyperparameters("net")
