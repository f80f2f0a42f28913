"""`chuck ui`: the URL only once the server answers, every process it started stopped on Ctrl-C or SIGTERM,
no third-party noise; and, in a real headless Chromium (Debian's `chromium`), a run logged by
MLflowDecisionLogger shows its loss chart, its lr chart and its decision table.

The fast tests drive `chuck ui`'s machinery with a stand-in server (a process tree that answers /health
after a delay); the slow one starts the real MLflow UI through the `chuck ui` command line."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from chuck.tracking.ui import _alive, _descendants, chuck_experiment, tour_run_pages, ui_url
from tests.browser import find_chromium
from tests.mlflow_server import free_port

ROOT = Path(__file__).resolve().parents[2]

#: A stand-in for `mlflow ui`: a child and a grandchild that would outlive a careless stop (one of them in
#: a session of its own), and /health answering only after a delay, with the moment it first did recorded.
FAKE_SERVER = textwrap.dedent("""
    import http.server, subprocess, sys, time
    port, delay, stamp = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                      "subprocess.Popen(sys.argv[1:]); time.sleep(600)", *sleeper])
    subprocess.Popen(sleeper, start_new_session=True)
    time.sleep(delay)
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            with open(stamp, "a") as f:
                f.write(f"{time.time()}\\n")
            self.send_response(200); self.end_headers(); self.wfile.write(b"OK")
        def log_message(self, *a):
            print("DeprecationWarning: noise a user should not see", file=sys.stderr)
    http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
""")


def _start_chuck_ui(tmp_path: Path, port: int, command: list[str] | None = None, uri: str | None = None):
    uri = uri or f"sqlite:///{tmp_path / 'empty.db'}"
    code = (
        f"import sys; from chuck.tracking.ui import run_ui; sys.exit(run_ui({uri!r}, {port}, command={command!r}, "
        f"log_path={str(tmp_path / 'ui.log')!r}))"
    )
    env = {**os.environ, "CHUCK_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    """Ctrl-C as in a terminal: a test run started in the background without job control (``cmd &``
    in a script, nohup) inherits SIGINT *ignored*, and Python then installs no KeyboardInterrupt
    handler, so the SIGINT case would test the shell rather than ``chuck ui``."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _read_url(proc: subprocess.Popen, timeout: float) -> tuple[str, float]:
    """The URL line of `chuck ui`, and when it came."""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("MLflow UI: "):
            return line.split()[2], time.time()
        if not line and proc.poll() is not None:
            raise AssertionError(f"chuck ui exited ({proc.returncode}): {proc.stderr.read() if proc.stderr else ''}")
    raise AssertionError("chuck ui printed no URL")


def _wait_gone(pids: list[int], timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.2)
    return [p for p in pids if _alive(p)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_chuck_ui_waits_for_the_server_and_stops_everything_it_started(tmp_path, sig) -> None:
    port = free_port()
    stamp = tmp_path / "answered"
    fake = tmp_path / "fake_server.py"
    fake.write_text(FAKE_SERVER)
    proc = _start_chuck_ui(tmp_path, port, [sys.executable, str(fake), "{port}", "3", str(stamp)])
    tree: list[int] = []
    try:
        url, printed_at = _read_url(proc, timeout=120)
        assert url == ui_url(f"http://127.0.0.1:{port}", None)
        first_answer = float(stamp.read_text().split()[0])
        assert first_answer <= printed_at, "the URL was printed before the server answered"
        tree = _descendants(proc.pid)
        assert len(tree) >= 4, tree  # the server, its child, the grandchild (and the one in its own session)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 0
        assert _wait_gone(tree) == [], "processes chuck ui started outlived it"
        out, err = proc.communicate()
        assert "Deprecation" not in out + err  # the server's chatter goes to its log, not the terminal
        assert "Deprecation" in (tmp_path / "ui.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in tree:  # whatever a failing run left behind (all started by this test)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_server_that_dies_is_reported_with_its_log(tmp_path) -> None:
    proc = _start_chuck_ui(tmp_path, free_port(), [sys.executable, "-c", "import sys; print('boom: no store'); sys.exit(3)"])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "exited with status 3" in err and "boom: no store" in err
    assert "MLflow UI:" not in out


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """A local SQLite store with one run logged by MLflowDecisionLogger (clipping on, a validation loss), or
    the latest chuck run of the store ``CHUCK_UI_STORE`` names (experiments/mlflow_screenshots.sh: the demo's)."""
    store = os.environ.get("CHUCK_UI_STORE")
    if store:
        from mlflow import MlflowClient

        found = chuck_experiment(store)
        assert found, f"no chuck run in {store}"
        client = MlflowClient(tracking_uri=store)
        run = client.search_runs([found[0]], filter_string="tags.`chuck.policy_id` != ''", max_results=1)[0]
        return store, found[0], run.info.run_id, run.info.run_name

    import chuck
    from tests.conftest import logged_heuristic_run, run_steps

    root = tmp_path_factory.mktemp("ui-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    logger = chuck.MLflowDecisionLogger(
        experiment="chuck-ui-test",
        run_name="ui-run",
        tracking_uri=uri,
        flush_every=0.5,
        spool_dir=root / "spool",
        params={"task": "tests.frozen_net"},
        system_metrics=False,
    )
    model, opt = logged_heuristic_run(logger)
    run_steps(model, opt, 0, 80, observe_every=10)
    opt.close()
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=uri).get_run(logger.run_id)
    return uri, run.info.experiment_id, logger.run_id, "ui-run"


@pytest.mark.slow
def test_the_run_page_in_a_real_browser(tmp_path, logged_run) -> None:
    """`chuck ui` on a store with a logged run; headless Chromium finds the loss chart, the lr chart and the
    decision table; then SIGTERM stops every process. CHUCK_SCREENSHOTS=DIR keeps the screenshots (the
    docs' pictures come from here, through experiments/mlflow_screenshots.sh)."""
    if find_chromium() is None:
        if os.environ.get("CHUCK_TEST_REQUIRE_CHROMIUM"):
            pytest.fail("CHUCK_TEST_REQUIRE_CHROMIUM is set but no Chromium is installed")
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)")
    from tests.browser import HeadlessChromium

    uri, experiment_id, run_id, run_name = logged_run
    port = free_port()
    proc = _start_chuck_ui(tmp_path, port, uri=uri)
    try:
        url, _ = _read_url(proc, timeout=300)
        base = f"http://127.0.0.1:{port}"
        assert url == ui_url(base, experiment_id)  # chuck's experiment, on its runs view
        tree = _descendants(proc.pid)
        shots = Path(os.environ.get("CHUCK_SCREENSHOTS") or tmp_path)
        with HeadlessChromium() as browser:
            texts = tour_run_pages(browser, base, experiment_id, run_id, out_dir=shots, run_name=run_name)
        assert run_name in texts["runs"] and "Tool calls" not in texts["runs"]  # runs view, not the GenAI overview
        assert "optimizer.lr" in texts["run"] and "raised the lr" in texts["run"]  # parameters and the story
        metrics = texts["metrics"]
        assert "Training" in metrics and "train_loss" in metrics and "val_loss" in metrics  # the loss charts...
        assert "\nlr\n" in metrics and "\nchuck\n" in metrics  # ...next to the lr chart; then clipping, dropout, sources
        table = texts["decisions"]
        assert "changed" in table and "why" in table and "lr x" in table  # the decision table: what changed, why
        for page in ("runs", "run", "metrics", "decisions", "timeline"):
            assert (shots / f"mlflow_{page}.png").stat().st_size > 20_000, page
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert _wait_gone(tree) == [], "MLflow processes outlived chuck ui"
        out, err = proc.communicate()
        assert "Warning" not in out + err, out + err
    finally:
        if proc.poll() is None:
            proc.kill()
