"""chuck.tune: a real Optuna study in SQLite storage, with MLflow nested runs, warm start and resume."""

from __future__ import annotations

import math

import optuna
import pytest
from mlflow import MlflowClient

from chuck.history import read_history
from chuck.tuning.cold_start import tune, zoo_train_fn


@pytest.fixture
def tiny():
    return zoo_train_fn("tabular.wine_mlp", seed=0, steps=30, interval=10)


def test_tune_logs_trials_and_writes_history(tiny, tmp_path) -> None:
    train_fn, model = tiny
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = tune(
        train_fn,
        n_trials=4,
        model=model,
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        study_name="t1",
        tracking_uri=uri,
        n_startup_trials=2,
    )
    assert set(res.best_params) == {"lr", "weight_decay", "clip"} and math.isfinite(res.best_value)
    assert res.trials == 4
    client = MlflowClient(tracking_uri=uri)
    children = client.search_runs(
        [client.get_experiment_by_name("chuck-tune").experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{res.mlflow_run_id}'",
    )
    assert len(children) == 4 and all("lr" in c.data.params for c in children)
    assert client.get_run(res.mlflow_run_id).data.metrics["best_val_loss"] == pytest.approx(res.best_value)
    hist = read_history()
    assert len(hist) == 1 and hist.row(0, named=True)["label"] == "tune:t1"


def test_interrupted_study_resumes(tiny, tmp_path) -> None:
    train_fn, model = tiny
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    calls = {"n": 0}

    def flaky(params, trial):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user hits Ctrl-C during the third trial
        return train_fn(params, trial)

    with pytest.raises(KeyboardInterrupt):
        tune(flaky, n_trials=5, storage=storage, study_name="resume", tracking=False, history=False)
    study = optuna.load_study(study_name="resume", storage=storage)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 2
    res = tune(train_fn, n_trials=5, storage=storage, study_name="resume", tracking=False, history=False)
    assert res.trials == 5
    study = optuna.load_study(study_name="resume", storage=storage)
    assert sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials) == 5


def test_warm_start_enqueues_nearest_history(tiny, tmp_path) -> None:
    train_fn, model = tiny
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = tune(train_fn, n_trials=3, model=model, storage=storage, study_name="cold", tracking=False, warm_start=False)
    assert first.enqueued == []
    warm = tune(train_fn, n_trials=2, model=model, storage=storage, study_name="warm", tracking=False)
    assert warm.enqueued and warm.enqueued[0]["lr"] == pytest.approx(first.best_params["lr"])
    study = optuna.load_study(study_name="warm", storage=storage)
    assert study.trials[0].params["lr"] == pytest.approx(first.best_params["lr"])


def test_eps_range_only_for_adam_family(tiny) -> None:
    train_fn, _ = tiny
    with pytest.raises(ValueError, match="Adam-family"):
        tune(train_fn, n_trials=1, optimizer="SGD", eps_range=(1e-8, 1e-4), tracking=False)
    with pytest.raises(ValueError, match="lr_range"):
        tune(train_fn, n_trials=1, lr_range=(1.0, 0.1), tracking=False)


def test_warm_start_leaves_out_runs_that_collapsed_and_says_what_it_rests_on(tiny, tmp_path) -> None:
    """Three history-seeded trials all at chance level, seeded by a run that collapsed."""
    import time
    import uuid

    from chuck.history import RunRecord, fingerprint, write_record

    train_fn, model = tiny

    def run(lr: float, best: float, final: float) -> None:
        write_record(
            RunRecord(
                run_id=uuid.uuid4().hex,
                created=time.time(),
                policy_id="heuristic@1",
                fingerprint=fingerprint(model, None) | {"optimizer": "AdamW"},
                initial={"lr": lr, "weight_decay": 0.01, "clip": math.inf},
                final={"lr": lr / 100, "weight_decay": 0.01, "clip": math.inf, "lr_mult": 0.01, "wd_mult": 1.0},
                outcome={"initial_train_loss": 1.1, "best_val_loss": best, "final_val_loss": final, "steps": 250},
            )
        )

    run(1e-2, 0.56, 0.58)
    run(0.83, 0.62, 1.44)  # collapsed
    res = tune(train_fn, n_trials=1, model=model, storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name="w", tracking=False)
    assert res.enqueued and [p["lr"] for p in res.enqueued] == [pytest.approx(1e-2)]
    assert "from 1 past run(s)" in res.warm_start_basis and "left out 1 collapsed" in res.warm_start_basis


def test_tune_cli_prints_the_instance_it_tunes_and_takes_an_instance_seed(tmp_path, capsys) -> None:
    """A zoo task is a family: the instance tuned (width, depth, ...) is printed, and --instance-seed picks it."""
    from chuck.cli.main import main
    from chuck.tuning.cold_start import zoo_instance

    chosen = zoo_instance("tabular.wine_mlp", instance_seed=3, steps=20)
    assert chosen.settings() != zoo_instance("tabular.wine_mlp", instance_seed=0).settings()
    argv = ["tune", "--task", "tabular.wine_mlp", "--trials", "1", "--steps", "20", "--instance-seed", "3"]
    assert main([*argv, "--storage", f"sqlite:///{tmp_path / 'o.db'}", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"tuning {chosen.describe()}"
    for key in ("width", "depth", "activation", "norm", "batch_size", "data_fraction"):
        assert f"{key}=" in first
    assert "--instance-seed 3" in first and "20 steps per trial with AdamW" in first
    # the instance trained is that one: its model is the one the history record describes
    import torch

    hist = read_history()
    torch.manual_seed(chosen.config.seed)
    params = sum(p.numel() for p in chosen.task.build(chosen.config).model.parameters())
    assert hist.row(0, named=True)["fp_param_count"] == params


@pytest.mark.parametrize("tracking", [False, True])
def test_diverged_trials_score_worst_and_a_study_of_only_them_says_so(tmp_path, tracking) -> None:
    """A trial whose loss is nan or inf scores the worst value (with and without MLflow alike: without it
    Optuna used to fail the trial), keeps its real loss, and never becomes the best; a study where every
    trial diverged raises TuneError instead of Optuna's "Record does not exist"."""
    from chuck.tuning.cold_start import NONFINITE_SCORE, TuneError

    def train_fn(params, trial):
        return float("nan") if params["lr"] > 1e-2 else params["lr"]

    kw = {"storage": f"sqlite:///{tmp_path / 'optuna.db'}", "tracking": tracking, "history": False, "n_startup_trials": 6}
    kw["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = tune(train_fn, n_trials=6, study_name="mixed", lr_range=(1e-4, 1.0), seed=3, **kw)
    study = optuna.load_study(study_name="mixed", storage=kw["storage"])
    diverged = [t for t in study.trials if t.params["lr"] > 1e-2]
    assert diverged and all(t.state.name == "COMPLETE" and t.value == NONFINITE_SCORE for t in diverged)
    assert all(math.isnan(t.user_attrs["chuck.loss"]) for t in diverged)
    assert res.best_value < 1e-2 and res.best_params["lr"] == pytest.approx(res.best_value)
    with pytest.raises(TuneError, match="no trial of study 'all-nan' ended with a finite loss"):
        tune(lambda p, t: float("inf"), n_trials=3, study_name="all-nan", **kw)


def test_tune_refuses_what_train_fn_and_n_trials_cannot_be(tiny) -> None:
    train_fn, _ = tiny
    with pytest.raises(TypeError, match="n_trials must be a whole number"):
        tune(train_fn, n_trials=2.5, tracking=False)
    with pytest.raises(TypeError, match="train_fn must return the trial's final validation loss .* got NoneType"):
        tune(lambda p, t: None, n_trials=1, tracking=False, history=False, study_name="none")
