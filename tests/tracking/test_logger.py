"""Decisions in MLflow, checked through MlflowClient against a real `mlflow server` on loopback;
a server outage in the middle of a run; and the faults of a spool
on a full disk, records lost and reported, bounded memory, the decision table spooled and
replayed, an unwritable CHUCK_HOME, a configurable close deadline."""

from __future__ import annotations

import csv
import json
import os
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient

import chuck
from tests.conftest import batch, logged_heuristic_run, make_net
from tests.full_disk import full_disk  # noqa: F401 - fixture
from tests.mlflow_server import MlflowServer, free_port


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


def _lines(path: str) -> list[str]:
    return Path(path).read_text().splitlines()


def _train(opt, model, start: int, stop: int) -> None:
    for s in range(start, stop):
        x, y = batch(s)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()
        if s % 20 == 19:
            opt.observe(val_loss=float(loss.detach()) * 1.1)


def _assert_step_shaped(history, decisions, last_step: int) -> None:
    """The logged lr is piecewise constant: it changes only from a decision's step to the next step, to
    the lr that decision set, and its last point is the run's last step."""
    points = sorted((m.step, m.value) for m in history)
    assert points and points[-1][0] == last_step, points[-3:]
    after = {d.step: d.hyperparameters["lr"] for d in decisions}
    for (a, va), (b, vb) in zip(points, points[1:]):
        assert b > a, "one value a step"
        if vb != pytest.approx(va):
            assert b == a + 1 and a in after, f"the lr jumped between steps {a} and {b}, not right after a decision"
            assert vb == pytest.approx(after[a])


def test_the_lr_chart_is_step_shaped(tmp_path) -> None:
    """MLflow joins a metric's points with straight lines: the lr is logged where it changes (the old value
    at a decision's step, the new one at the next), so the chart shows the steps the lr really took."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = chuck.MLflowDecisionLogger(experiment="chuck-steps", tracking_uri=uri, spool_dir=tmp_path / "spool")
    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-5), "heuristic", model=model, interval=5, tracking=logger, history=False
    )
    _train(opt, model, 0, 60)
    opt.close()
    moves = [d for d in opt.decisions if d.changed.get("lr")]
    assert len(moves) >= 2, "the heuristic raises an lr this low"
    history = MlflowClient(tracking_uri=uri).get_metric_history(logger.run_id, "Training/lr")
    _assert_step_shaped(history, opt.decisions, last_step=60)
    points = sorted((m.step, m.value) for m in history)
    assert points[0] == (1, pytest.approx(1e-5))
    held = {a for (a, va), (_, vb) in zip(points, points[1:]) if vb != pytest.approx(va)}
    assert held == {d.step for d in moves}, "every move of the lr is drawn as a step at its decision"


def test_decisions_reach_the_tracking_server(server_uri) -> None:
    logger = chuck.MLflowDecisionLogger(experiment="chuck-test", run_name="content", tracking_uri=server_uri, flush_every=0.2)
    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-5), "heuristic", model=model, interval=5, tracking=logger
    )
    _train(opt, model, 0, 60)
    opt.close()
    client = MlflowClient(tracking_uri=server_uri)
    run = client.get_run(logger.run_id)
    assert run.data.tags["chuck.policy_id"] == "heuristic@1"
    assert run.data.tags["chuck.mode"] == "policy" and run.data.tags["chuck.policy_version"] == "1"
    steps = [d.step for d in opt.decisions]
    _assert_step_shaped(client.get_metric_history(logger.run_id, "Training/lr"), opt.decisions, last_step=60)
    for key in (
        "Training/weight_decay",
        "chuck/clip_on",
        "chuck/decision_source",
        "chuck.action/lr",
        "chuck.obs/loss.log_slope",
        "chuck.obs/grad.snr",
    ):
        assert len(client.get_metric_history(logger.run_id, key)) == len(steps), key
    local = client.download_artifacts(logger.run_id, "chuck/decisions.json")
    table = json.loads(Path(local).read_text())
    assert len(table) == len(steps)
    assert "observation" not in table[0]  # the raw observations have their own file
    observations = list(csv.DictReader(_lines(client.download_artifacts(logger.run_id, "chuck/observations.csv"))))
    assert [int(r["step"]) for r in observations] == steps
    assert set(observations[0]) == {"step", "source", *chuck.ObservationSpec().names}
    assert any(r["reason"] for r in table)
    assert run.info.status == "FINISHED"


def test_the_run_page_tells_the_story(server_uri) -> None:
    """Parameters, losses next to the hyperparameters, decision sources, the decision table (who, what changed,
    why first), the timeline and the description: what a person opening the run needs."""
    logger = chuck.MLflowDecisionLogger(
        experiment="chuck-story",
        run_name="story",
        tracking_uri=server_uri,
        flush_every=0.2,
        params={"task": "tests.frozen_net"},
        loss_every=5,
    )
    model, opt = logged_heuristic_run(logger)
    _train(opt, model, 0, 60)
    opt.close()
    client = MlflowClient(tracking_uri=server_uri)
    run = client.get_run(logger.run_id)
    params = run.data.params
    assert params["task"] == "tests.frozen_net" and params["optimizer"] == "AdamW"
    assert float(params["optimizer.lr"]) == 1e-5 and params["chuck.policy"] == "heuristic@1"
    assert params["chuck.version"] == chuck.__version__ and params["model"].startswith("FrozenNet: 471 parameters")
    train = client.get_metric_history(logger.run_id, "Training/train_loss")
    assert sorted(m.step for m in train) == list(range(5, 61, 5))
    val = client.get_metric_history(logger.run_id, "Training/val_loss")
    assert sorted(m.step for m in val) == [20, 40, 60]
    ratio = client.get_metric_history(logger.run_id, "chuck/clip_ratio")
    assert ratio and all(m.value > 0 for m in ratio)  # clipping is on: plotted against the median norm
    assert {m.value for m in client.get_metric_history(logger.run_id, "chuck/clip_on")} == {1.0}
    rows = list(csv.reader(_lines(client.download_artifacts(logger.run_id, "chuck/decisions.csv"))))
    assert rows[0][:4] == ["step", "source", "changed", "why"]
    raised = [r for r in rows[1:] if r[2].startswith("lr x")]
    assert raised and all("update ratio " in r[3] or "steps without" in r[3] for r in raised), raised
    names = {a.path for a in client.list_artifacts(logger.run_id, "chuck")}
    assert {"chuck/timeline.png", "chuck/timeline.html", "chuck/observations.csv"} <= names
    page = Path(client.download_artifacts(logger.run_id, "chuck/timeline.html")).read_text()
    assert "Decision table" in page and "update ratio " in page
    note = run.data.tags["mlflow.note.content"]
    assert "raised the lr" in note and "decisions" in note
    kind = client.get_experiment(run.info.experiment_id).tags.get("mlflow.experimentKind")
    assert kind == "custom_model_development"  # MLflow 3 opens it on the runs view


def test_server_outage_mid_run(tmp_path) -> None:
    srv = MlflowServer(tmp_path / "srv").start()
    try:
        logger = chuck.MLflowDecisionLogger(
            experiment="chuck-outage", tracking_uri=srv.uri, flush_every=0.2, spool_dir=tmp_path / "spool"
        )
        model = make_net()
        opt = chuck.ChuckOptimizer(
            torch.optim.AdamW(model.parameters(), lr=1e-3), "heuristic", model=model, interval=5, tracking=logger
        )
        _train(opt, model, 0, 100)
        time.sleep(0.5)
        srv.stop()  # the tracking server goes down mid-run
        _train(opt, model, 100, 300)  # nothing may raise: every step returns and training goes on
        assert opt.step_count == 300
        time.sleep(1.0)
        assert logger.spooled > 0, "records from the outage should wait in the spool"
        srv.start()  # it comes back
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # closing must not even warn once the server is back
            opt.close()
        assert logger.spooled == 0
        client = MlflowClient(tracking_uri=srv.uri)
        sources = client.get_metric_history(logger.run_id, "chuck/decision_source")
        assert sorted(m.step for m in sources) == sorted(d.step for d in opt.decisions)
        _assert_step_shaped(client.get_metric_history(logger.run_id, "Training/lr"), opt.decisions, last_step=300)
        losses = client.get_metric_history(logger.run_id, "Training/train_loss")
        assert sorted(m.step for m in losses) == list(range(10, 301, 10))  # every 10 steps, the outage's too
        assert len(opt.decisions) == 60
    finally:
        srv.stop()


def test_unreachable_server_keeps_records_for_replay(tmp_path) -> None:
    srv = MlflowServer(tmp_path / "srv").start()
    logger = chuck.MLflowDecisionLogger(
        experiment="chuck-replay", tracking_uri=srv.uri, flush_every=0.2, spool_dir=tmp_path / "spool"
    )
    assert logger.run_id  # the run exists (its id waits for the sender thread to create it)
    srv.stop()
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), "constant", model=model, interval=5, tracking=logger)
    _train(opt, model, 0, 30)
    with pytest.warns(RuntimeWarning, match="records kept in"):
        logger.close(timeout=2.0)
    assert logger.spooled > 0
    table = tmp_path / "spool" / f"{logger.run_id}.decisions.jsonl"
    assert table.exists(), "the decision table must wait in the spool too"
    srv.start()
    try:
        from chuck.tracking.logger import replay_spool

        sent = replay_spool(logger.spool_path, tracking_uri=srv.uri)
        assert sent > 0 and not logger.spool_path.exists() and not table.exists()
        client = MlflowClient(tracking_uri=srv.uri)
        hist = client.get_metric_history(logger.run_id, "chuck/decision_source")
        assert len(hist) == len(opt.decisions) == 6
        rows = json.loads(Path(client.download_artifacts(logger.run_id, "chuck/decisions.json")).read_text())
        assert [r["step"] for r in rows] == [d.step for d in opt.decisions]
    finally:
        srv.stop()


def test_spool_on_a_full_disk_does_not_stop_sending(server_uri, full_disk) -> None:
    """The spool is a safety net, not a gate: when it cannot be written, records are still sent."""
    logger = chuck.MLflowDecisionLogger(
        experiment="chuck-full-spool", tracking_uri=server_uri, flush_every=0.2, spool_dir=full_disk
    )
    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-3), "heuristic", model=model, interval=5, tracking=logger
    )
    with pytest.warns(RuntimeWarning, match="could not write the spool"):
        _train(opt, model, 0, 60)
        opt.close()
    client = MlflowClient(tracking_uri=server_uri)
    steps = sorted(m.step for m in client.get_metric_history(logger.run_id, "chuck/decision_source"))
    assert steps == sorted(d.step for d in opt.decisions) and len(steps) == 12
    assert len(client.get_metric_history(logger.run_id, "chuck.obs/grad.snr")) == 12
    assert logger.lost == 0
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and "chuck.records_lost" not in run.data.tags


def test_lost_records_are_counted_and_the_run_is_not_marked_complete(tmp_path, full_disk) -> None:
    """Spool unwritable and server down: only ``max_spool_records`` fit in memory; the rest are
    lost, counted, reported at close() and written on the run (status FAILED, chuck.records_lost)."""
    srv = MlflowServer(tmp_path / "srv").start()
    try:
        logger = chuck.MLflowDecisionLogger(
            experiment="chuck-lost", tracking_uri=srv.uri, flush_every=3600, spool_dir=full_disk, max_spool_records=50
        )
        assert logger.run_id  # the run exists (its id waits for the sender thread to create it)
        srv.stop()
        model = make_net()
        opt = chuck.ChuckOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.05), "constant", model=model, interval=5, tracking=logger
        )
        _train(opt, model, 0, 30)
        with pytest.warns(RuntimeWarning, match="could not write the spool"):
            assert logger.flush() is False  # drained into memory, capped at 50: the rest are gone
        assert logger.lost > 0
        srv.start()
        with pytest.warns(RuntimeWarning, match=r"\d+ records .*lost") as said:
            logger.close()  # (it queues the lr's last step too: one more record lost)
        assert f" {logger.lost} records " in str(said[0].message)
        run = MlflowClient(tracking_uri=srv.uri).get_run(logger.run_id)
        assert run.data.tags["chuck.records_lost"] == str(logger.lost)
        assert run.info.status == "FAILED"
    finally:
        srv.stop()


def _one_decision():
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), "heuristic", model=model, interval=5, history=False)
    _train(opt, model, 0, 5)
    return opt, opt.decisions[-1]


def test_memory_stays_bounded_during_an_outage(tmp_path, monkeypatch) -> None:
    """12k decisions while the server is unreachable: the table goes to the spool, not to a list."""
    import gc
    import tracemalloc

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail each send at once
    opt, decision = _one_decision()
    logger = chuck.MLflowDecisionLogger(
        run_id="0" * 32,
        tracking_uri=f"http://127.0.0.1:{free_port()}",
        flush_every=3600,
        spool_dir=tmp_path / "spool",
        log_observation=False,
    )
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(12):
            for _ in range(1000):
                logger(opt, decision)
            logger.flush()  # what the sender thread does every flush_every seconds
        gc.collect()  # failed requests leave reference cycles (exception, traceback, frames): not kept memory
        grew = (tracemalloc.get_traced_memory()[0] - before) / 2**20
    finally:
        tracemalloc.stop()
    assert grew < 4, f"the logger kept {grew:.0f} MiB for 12k decisions"
    table = tmp_path / "spool" / f"{logger.run_id}.decisions.jsonl"
    assert len(table.read_text().splitlines()) == 12_000
    with pytest.warns(RuntimeWarning, match="records kept in"):
        logger.close(timeout=1.0)


def test_unwritable_chuck_home_falls_back_to_a_temporary_spool(server_uri, tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where CHUCK_HOME's parent should be")
    monkeypatch.setenv("CHUCK_HOME", str(blocker / "home"))  # cannot be created, even by root
    with pytest.warns(RuntimeWarning, match="temporary spool"):
        logger = chuck.MLflowDecisionLogger(experiment="chuck-no-home", tracking_uri=server_uri, flush_every=0.2)
    assert not logger.spool_path.is_relative_to(blocker)
    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05), "constant", model=model, interval=5, tracking=logger, history=False
    )
    _train(opt, model, 0, 30)
    opt.close()
    hist = MlflowClient(tracking_uri=server_uri).get_metric_history(logger.run_id, "chuck/decision_source")
    assert len(hist) == len(opt.decisions) == 6


def test_close_deadline_is_configurable(tmp_path) -> None:
    """A server that is gone costs close() its deadline, not 30 s (ChuckOptimizer calls close() bare)."""
    logger = chuck.MLflowDecisionLogger(
        run_id="1" * 32,
        tracking_uri=f"http://127.0.0.1:{free_port()}",
        flush_every=0.2,
        spool_dir=tmp_path / "spool",
        close_timeout=1.5,
    )
    opt, decision = _one_decision()
    for _ in range(20):
        logger(opt, decision)
    with pytest.warns(RuntimeWarning, match="records kept in"):  # close gave up on the server and spooled
        logger.close()


def test_a_hung_request_does_not_keep_later_records_out_of_the_spool(tmp_path) -> None:
    """Regression (CI flake): the sender stuck in one request held the lock that spooling needed, so
    every decision after the first stayed in memory and died at close(). A server that accepts the
    connection and never answers is the fault."""
    import socket

    from chuck.tracking.spool import read_metric_file

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)  # connections complete in the kernel; nothing ever answers them
    try:
        logger = chuck.MLflowDecisionLogger(
            run_id="2" * 32,
            tracking_uri=f"http://127.0.0.1:{hung.getsockname()[1]}",
            flush_every=0.05,
            spool_dir=tmp_path / "spool",
        )
        model = make_net()
        opt = chuck.ChuckOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.05), "constant", model=model, interval=5, tracking=logger
        )
        for start in range(0, 30, 5):  # one decision per chunk; the sender is stuck on the first by the second
            _train(opt, model, start, start + 5)
            time.sleep(0.3)
        with pytest.warns(RuntimeWarning, match="records kept in"):  # close gave up on the stuck request
            logger.close(timeout=1.0)
        steps = sorted(s for k, _, _, s in read_metric_file(logger.spool_path) if k == "chuck/decision_source")
        assert steps == [d.step for d in opt.decisions] and len(steps) == 6
    finally:
        hung.close()


def test_experiments_chuck_creates_carry_the_kind_tag(tmp_path) -> None:
    from chuck import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.setup(uri, "fresh")
    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name("fresh")
    assert exp is not None and exp.tags.get(tracking.EXPERIMENT_KIND[0]) == tracking.EXPERIMENT_KIND[1]
    tracking.setup(uri, "fresh")  # a second setup of the same experiment is a no-op, not an error


class _LosesTheTagRace:
    """A real client whose tag write loses a race: another process writes the same tag first,
    then this write fails as SQLite's unique constraint makes it fail (the DDP test's CI failure)."""

    def __init__(self, client: MlflowClient) -> None:
        self.client, self.writes = client, 0

    def get_experiment(self, experiment_id: str):
        return self.client.get_experiment(experiment_id)

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        from mlflow.exceptions import MlflowException

        self.writes += 1
        self.client.set_experiment_tag(experiment_id, key, value)  # the other process
        raise MlflowException("UNIQUE constraint failed: experiment_tags.key, experiment_tags.experiment_id")


def test_tagging_an_experiment_tolerates_a_concurrent_writer(tmp_path) -> None:
    from chuck import tracking

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp_id = client.create_experiment("made-elsewhere")  # no kind tag: made by another tool
    racing = _LosesTheTagRace(client)
    tracking.tag_experiment_kind(racing, exp_id)
    assert racing.writes == 1
    assert client.get_experiment(exp_id).tags[tracking.EXPERIMENT_KIND[0]] == tracking.EXPERIMENT_KIND[1]
    tracking.tag_experiment_kind(racing, exp_id)  # already tagged: nothing written
    assert racing.writes == 1


def test_a_failed_tag_write_that_left_no_tag_is_not_swallowed(tmp_path) -> None:
    from mlflow.exceptions import MlflowException

    from chuck import tracking

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp_id = client.create_experiment("made-elsewhere")

    class Broken(_LosesTheTagRace):
        def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
            raise MlflowException("store unavailable")

    with pytest.raises(MlflowException, match="store unavailable"):
        tracking.tag_experiment_kind(Broken(client), exp_id)


def test_setup_tolerates_another_process_creating_the_experiment_first(tmp_path, monkeypatch) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    from chuck import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    real_create = mlflow.create_experiment

    def loses_the_race(name, **kwargs):
        real_create(name, **kwargs)  # the other process (a DDP rank, an evaluation worker) wins
        raise MlflowException(f"Experiment(name={name}) already exists.")

    monkeypatch.setattr(mlflow, "create_experiment", loses_the_race)
    tracking.setup(uri, "raced")
    assert mlflow.get_experiment_by_name("raced") is not None

    def fails(name, **kwargs):
        raise MlflowException("store unavailable")

    monkeypatch.setattr(mlflow, "create_experiment", fails)
    with pytest.raises(MlflowException, match="store unavailable"):
        tracking.setup(uri, "never-made")


def test_server_unreachable_at_the_start_creates_the_run_when_it_answers(tmp_path) -> None:
    """An outage when the logger starts its run is spooled like one mid-run: no exception, no wait."""
    srv = MlflowServer(tmp_path / "srv")  # its port, not started yet
    with pytest.warns(RuntimeWarning, match="unreachable"):  # the constructor returns and says so
        logger = chuck.MLflowDecisionLogger(
            experiment="chuck-late-server", run_name="late", tracking_uri=srv.uri, flush_every=0.2, spool_dir=tmp_path / "spool"
        )
    placeholder = logger.run_id
    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05), "constant", model=model, interval=5, tracking=logger, history=False
    )
    _train(opt, model, 0, 30)
    time.sleep(0.5)
    assert logger.spooled > 0 and logger.run_id == placeholder
    srv.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the server is back: closing sends everything, silently
            opt.close()
        assert logger.run_id != placeholder and logger.spooled == 0
        assert not list((tmp_path / "spool").glob(f"{placeholder}*"))
        client = MlflowClient(tracking_uri=srv.uri)
        run = client.get_run(logger.run_id)
        assert run.info.status == "FINISHED" and run.info.run_name == "late"
        assert client.get_experiment(run.info.experiment_id).name == "chuck-late-server"
        assert len(client.get_metric_history(logger.run_id, "chuck/decision_source")) == len(opt.decisions) == 6
    finally:
        srv.stop()


def test_replay_creates_a_run_mlflow_never_saw_and_ends_it(tmp_path) -> None:
    srv = MlflowServer(tmp_path / "srv")
    with pytest.warns(RuntimeWarning, match="unreachable"):
        logger = chuck.MLflowDecisionLogger(
            experiment="chuck-never-seen", tracking_uri=srv.uri, flush_every=0.2, spool_dir=tmp_path / "spool"
        )
    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05), "constant", model=model, interval=5, tracking=logger, history=False
    )
    _train(opt, model, 0, 30)
    with pytest.warns(RuntimeWarning, match="records kept in"):
        logger.close(timeout=1.0)
    srv.start()
    try:
        from chuck.tracking.logger import replay_spool

        assert replay_spool(logger.spool_path, tracking_uri=srv.uri) > 0
        assert not list((tmp_path / "spool").iterdir())
        client = MlflowClient(tracking_uri=srv.uri)
        exp = client.get_experiment_by_name("chuck-never-seen")
        (run,) = client.search_runs([exp.experiment_id])
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "chuck/decision_source")) == len(opt.decisions) == 6
    finally:
        srv.stop()


def test_replay_ends_the_run_the_logger_created(tmp_path) -> None:
    """A run left RUNNING by a server that was down at close() ends FINISHED once replayed."""
    srv = MlflowServer(tmp_path / "srv").start()
    try:
        logger = chuck.MLflowDecisionLogger(
            experiment="chuck-replay-status", tracking_uri=srv.uri, flush_every=0.2, spool_dir=tmp_path / "spool"
        )
        assert logger.run_id  # the run exists (its id waits for the sender thread to create it)
        srv.stop()
        model = make_net()
        opt = chuck.ChuckOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.05), "constant", model=model, interval=5, tracking=logger, history=False
        )
        _train(opt, model, 0, 30)
        with pytest.warns(RuntimeWarning, match="records kept in"):
            logger.close(timeout=1.0)
        srv.start()
        from chuck.tracking.logger import replay_spool

        replay_spool(logger.spool_path, tracking_uri=srv.uri)
        assert MlflowClient(tracking_uri=srv.uri).get_run(logger.run_id).info.status == "FINISHED"
    finally:
        srv.stop()


def test_a_tracking_uri_naming_no_store_is_refused_at_once(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "foo://bar")
    with pytest.raises(ValueError, match=r"'foo://bar' \(from \$MLFLOW_TRACKING_URI\) names no MLflow store"):
        chuck.MLflowDecisionLogger(experiment="x")


def test_sigterm_leaves_the_queued_records_in_the_spool(tmp_path) -> None:
    """docker stop / SLURM preemption: what the sender had not taken yet is on disk before the process ends,
    and the process still ends killed by SIGTERM."""
    import signal
    import subprocess
    import sys
    import textwrap

    root = Path(__file__).resolve().parents[2]
    code = textwrap.dedent(
        f"""
        import time, torch, chuck
        from tests.conftest import make_net, run_steps
        logger = chuck.MLflowDecisionLogger(run_id="1" * 32, tracking_uri="http://127.0.0.1:{free_port()}",
                                            flush_every=600, spool_dir={str(tmp_path / "spool")!r}, system_metrics=False)
        model = make_net()
        opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), "constant", model=model,
                                   interval=5, tracking=logger)
        run_steps(model, opt, 0, 30)
        print("ready", flush=True)
        time.sleep(120)
        """
    )
    env = dict(os.environ, CHUCK_HOME=str(tmp_path / "home"), PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, err[-2000:]
    spooled = _lines(str(tmp_path / "spool" / f"{'1' * 32}.jsonl"))
    assert sum(json.loads(r)[0] == "chuck/decision_source" for r in spooled) == 6
    assert len(_lines(str(tmp_path / "spool" / f"{'1' * 32}.decisions.jsonl"))) == 6
    assert len(list((tmp_path / "home" / "history").glob("run-*.parquet"))) == 1
