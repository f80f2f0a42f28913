"""Every experiment chuck creates or uses carries ``mlflow.experimentKind=custom_model_development``, so
that MLflow 3 opens it on its runs view, also one made elsewhere without the tag: through
``chuck.tracking.setup`` (what the demo, ``train-policy``, ``evaluate`` and ``tune`` call), the decision
logger starting a run or given one, and ``chuck.tune``."""

from __future__ import annotations

import pytest
import torch
from mlflow import MlflowClient

import chuck
from chuck import tracking
from tests.conftest import make_net, run_steps


def _made_elsewhere(uri: str, name: str) -> str:
    """An experiment another tool created: no kind tag."""
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(name)
    assert tracking.EXPERIMENT_KIND[0] not in (client.get_experiment(exp_id).tags or {})
    return exp_id


def _kind(uri: str, exp_id: str) -> str | None:
    return (MlflowClient(tracking_uri=uri).get_experiment(exp_id).tags or {}).get(tracking.EXPERIMENT_KIND[0])


def _logged_run(logger) -> None:
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), "constant", model=model, interval=5, tracking=logger)
    run_steps(model, opt, 0, 10)
    opt.close()


@pytest.mark.parametrize("entry", ["setup", "logger starting a run", "logger given a run", "tune"])
def test_an_experiment_chuck_uses_gets_the_kind_tag(tmp_path, entry) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id = _made_elsewhere(uri, "elsewhere")
    if entry == "setup":  # chuck demo, train-policy, evaluate and tune open their experiment with it
        tracking.setup(uri, "elsewhere")
    elif entry == "logger starting a run":
        _logged_run(chuck.MLflowDecisionLogger(experiment="elsewhere", tracking_uri=uri, spool_dir=tmp_path / "spool"))
    elif entry == "logger given a run":
        run = MlflowClient(tracking_uri=uri).create_run(exp_id)
        _logged_run(chuck.MLflowDecisionLogger(run.info.run_id, tracking_uri=uri, spool_dir=tmp_path / "spool"))
    else:
        storage = f"sqlite:///{tmp_path / 'optuna.db'}"
        chuck.tune(
            lambda params, trial: 1.0, n_trials=1, storage=storage, tracking_uri=uri, experiment="elsewhere", history=False
        )
    assert _kind(uri, exp_id) == tracking.EXPERIMENT_KIND[1]
