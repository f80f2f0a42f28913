"""The run record's best validation loss is the best of the whole run, not of the evaluations the
loss monitor keeps for its trend (the last 100)."""

from __future__ import annotations

import math

import torch

import chuck
from chuck.history import read_history
from tests.conftest import make_net, run_steps


def test_the_record_keeps_the_best_validation_loss_of_the_whole_run(tmp_path) -> None:
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.01), "constant", model=model, history=str(tmp_path))
    run_steps(model, opt, 0, 5)
    opt.observe(val_loss=0.1)  # the best, early
    for i in range(150):
        opt.observe(val_loss=1.1 + 0.001 * i)
    opt.close()
    row = read_history(tmp_path).row(0, named=True)
    assert math.isclose(row["outcome_best_val_loss"], 0.1)
    assert math.isclose(row["outcome_final_val_loss"], 1.1 + 0.001 * 149)
    assert math.isclose(opt.loss_monitor.best_val_loss, 0.1)


def test_no_validation_loss_records_nan(tmp_path) -> None:
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.01), "constant", model=model, history=str(tmp_path))
    run_steps(model, opt, 0, 5)
    opt.close()
    assert math.isnan(read_history(tmp_path).row(0, named=True)["outcome_best_val_loss"])
