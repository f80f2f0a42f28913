"""An unusable history location never stops training: one RuntimeWarning, a run without a record."""

from __future__ import annotations

import pathlib
import warnings

import pytest
import torch

import chuck
from tests.conftest import make_net, run_steps


def _train_and_close() -> tuple[chuck.ChuckOptimizer, list[warnings.WarningMessage]]:
    model = make_net()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), "constant", model=model)
        run_steps(model, opt, 0, 10)
        opt.close()
    return opt, [w for w in caught if issubclass(w.category, RuntimeWarning)]


def test_chuck_home_that_is_a_regular_file_warns_once_and_trains(tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "home-is-a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("CHUCK_HOME", str(blocker))
    opt, caught = _train_and_close()
    assert opt.step_count == 10 and opt.history_path is None
    assert len(caught) == 1 and "no history record" in str(caught[0].message)
    assert str(blocker) in str(caught[0].message)


def test_home_that_cannot_be_created_warns_once_and_trains(monkeypatch) -> None:
    """``HOME=/nonexistent`` for a non-root user: creating ``~/.chuck`` raises PermissionError."""
    monkeypatch.delenv("CHUCK_HOME")
    monkeypatch.setenv("HOME", "/nonexistent")
    real_mkdir = pathlib.Path.mkdir

    def denied(self, *args, **kwargs):
        if str(self).startswith("/nonexistent"):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", denied)
    opt, caught = _train_and_close()
    assert opt.step_count == 10 and opt.history_path is None
    assert len(caught) == 1 and "Permission denied" in str(caught[0].message)


def test_history_directory_given_that_is_a_file_warns_once(tmp_path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    model = make_net()
    with pytest.warns(RuntimeWarning, match="no history record"):
        opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), "constant", model=model, history=str(target))
    run_steps(model, opt, 0, 5)
    opt.close()
    assert opt.history_path is None and target.read_text() == "x"
