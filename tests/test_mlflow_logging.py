"""Decisions in MLflow, checked through MlflowClient against a real `mlflow server` on loopback;
and a server outage in the middle of a run."""

from __future__ import annotations

import json
import os
import statistics
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient

import chuck
from tests.conftest import batch, make_net
from tests.mlflow_server import MlflowServer


@pytest.fixture(scope="module")
def server_uri(tmp_path_factory):
    """The server .ci/run started (CHUCK_TEST_MLFLOW_URI), or one of our own."""
    uri = os.environ.get("CHUCK_TEST_MLFLOW_URI")
    if uri:
        yield uri
        return
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield srv.uri
    srv.stop()


def _train(opt, model, start: int, stop: int, times: list[float] | None = None) -> None:
    for s in range(start, stop):
        t0 = time.perf_counter()
        x, y = batch(s)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()
        if times is not None:
            times.append(time.perf_counter() - t0)
        if s % 20 == 19:
            opt.observe(val_loss=float(loss.detach()) * 1.1)


def test_decisions_reach_the_tracking_server(server_uri) -> None:
    logger = chuck.MLflowDecisionLogger(experiment="chuck-test", run_name="content", tracking_uri=server_uri, flush_every=0.2)
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-5), "heuristic", model=model, interval=5,
                               tracking=logger)
    _train(opt, model, 0, 60)
    opt.close()
    client = MlflowClient(tracking_uri=server_uri)
    run = client.get_run(logger.run_id)
    assert run.data.tags["chuck.policy_id"] == "heuristic@1"
    assert run.data.tags["chuck.mode"] == "policy" and run.data.tags["chuck.policy_version"] == "1"
    steps = [d.step for d in opt.decisions]
    lr_hist = client.get_metric_history(logger.run_id, "chuck.lr")
    assert sorted(m.step for m in lr_hist) == sorted(steps)
    assert [m.value for m in sorted(lr_hist, key=lambda m: m.step)] == pytest.approx([d.hyperparameters["lr"] for d in opt.decisions])
    for key in ("chuck.weight_decay", "chuck.action.lr", "chuck.obs.loss.log_slope", "chuck.obs.grad.snr"):
        assert len(client.get_metric_history(logger.run_id, key)) == len(steps), key
    local = client.download_artifacts(logger.run_id, "chuck/decisions.json")
    table = json.loads(open(local).read())
    assert len(table) == len(steps)
    assert set(table[0]["observation"]) == set(chuck.ObservationSpec().names)
    assert any(r["reason"] for r in table)
    assert run.info.status == "FINISHED"


def test_server_outage_mid_run(tmp_path) -> None:
    srv = MlflowServer(tmp_path / "srv").start()
    try:
        logger = chuck.MLflowDecisionLogger(experiment="chuck-outage", tracking_uri=srv.uri, flush_every=0.2,
                                            spool_dir=tmp_path / "spool")
        model = make_net()
        opt = chuck.ChuckOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), "heuristic", model=model,
                                   interval=5, tracking=logger)
        before: list[float] = []
        _train(opt, model, 0, 100, before)
        time.sleep(0.5)
        srv.stop()  # the tracking server goes down mid-run
        during: list[float] = []
        _train(opt, model, 100, 300, during)  # nothing may raise, and steps must not slow down
        time.sleep(1.0)
        assert logger.spooled > 0, "records from the outage should wait in the spool"
        srv.start()  # it comes back
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # closing must not even warn once the server is back
            opt.close()
        assert logger.spooled == 0
        ratio = statistics.median(during) / statistics.median(before)
        assert ratio < 1.5, f"steps slowed down during the outage: median x{ratio:.2f}"
        client = MlflowClient(tracking_uri=srv.uri)
        lr_hist = client.get_metric_history(logger.run_id, "chuck.lr")
        assert sorted(m.step for m in lr_hist) == sorted(d.step for d in opt.decisions)
        assert len(opt.decisions) == 60
    finally:
        srv.stop()


def test_unreachable_server_keeps_records_for_replay(tmp_path) -> None:
    srv = MlflowServer(tmp_path / "srv").start()
    logger = chuck.MLflowDecisionLogger(experiment="chuck-replay", tracking_uri=srv.uri, flush_every=0.2,
                                        spool_dir=tmp_path / "spool")
    srv.stop()
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), "constant", model=model, interval=5,
                               tracking=logger)
    _train(opt, model, 0, 30)
    with pytest.warns(RuntimeWarning, match="records kept in"):
        logger.close(timeout=2.0)
    assert logger.spooled > 0
    srv.start()
    try:
        from chuck.mlflow_logger import replay_spool

        sent = replay_spool(logger.spool_path, tracking_uri=srv.uri)
        assert sent > 0 and not logger.spool_path.exists()
        hist = MlflowClient(tracking_uri=srv.uri).get_metric_history(logger.run_id, "chuck.lr")
        assert len(hist) == len(opt.decisions) == 6
    finally:
        srv.stop()
