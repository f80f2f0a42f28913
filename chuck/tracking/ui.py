"""``chuck ui``: the MLflow UI on chuck's store, on loopback, started and stopped cleanly.

What it does that ``mlflow ui`` alone does not:

* it prints the URL only once the server answers (``/health``), with a spinner meanwhile
  (on a loaded machine the server took over a minute to come up), and the URL opens chuck's
  most recent experiment on its runs view (``?workflowType=machine_learning``: MLflow 3 opens
  experiments on its GenAI overview otherwise);
* the server's own output (deprecation warnings of its dependencies, access logs) goes to a
  log file, not the terminal; its path is printed if the server fails;
* it starts one worker and no job-execution consumers (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``:
  chuck's runs need none; MLflow 3 otherwise starts eight more processes), in a process group of
  its own, and stops that whole group when it is stopped (Ctrl-C, SIGTERM, SIGHUP) or dies
  (Linux: the server gets SIGTERM when its parent goes);
* it binds to 127.0.0.1 only.

:class:`UIServer` is the same machinery for the browser test and the screenshot script.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

#: Environment of the server process: no Python deprecation noise, no job-execution consumers.
SERVER_ENV = {
    "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::PendingDeprecationWarning,ignore::FutureWarning",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS": "false",
}
#: The query that makes MLflow 3 show an experiment's runs (model training), not the GenAI overview.
RUNS_VIEW = "workflowType=machine_learning"


def _load_prctl() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the signal handlers still stop the group
        return None


# resolved here, not in the child: between fork and exec nothing may import (another thread may hold the lock)
_PRCTL = _load_prctl() if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM this process when the one that started it dies (even by SIGKILL)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class UIServer:
    """The MLflow UI server for ``tracking_uri`` on ``127.0.0.1:port``, in its own process group.

    Args:
        tracking_uri: the backend store (``sqlite:///...``, ``postgresql://...``, a directory).
        port: the port (0: a free one).
        log_path: where the server's output goes (default: a temporary file).
        command: the server command instead of ``mlflow ui`` (``{port}`` and ``{uri}`` are filled in); tests
            use a stand-in.
    """

    def __init__(
        self, tracking_uri: str, port: int = 5000, log_path: str | Path | None = None, command: list[str] | None = None
    ) -> None:
        self.tracking_uri = tracking_uri
        self.command = command
        self.port = port or _free_port()
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="chuck-ui-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> UIServer:
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            "{uri}",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--workers",
            "1",
        ]
        cmd = [c.format(port=self.port, uri=self.tracking_uri) for c in (self.command or cmd)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **SERVER_ENV},
                start_new_session=True,
                preexec_fn=_die_with_parent if _PRCTL is not None else None,
            )
        return self

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 300.0, tick: Callable[[float], None] | None = None) -> None:
        """Wait until the server answers; raise ``RuntimeError`` (with its log's tail) if it exits first."""
        assert self.proc is not None, "start() first"
        t0 = time.monotonic()
        while True:
            if self.answers():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"the MLflow UI server exited with status {self.proc.returncode}:\n{self.log_tail()}")
            waited = time.monotonic() - t0
            if waited > timeout:
                raise TimeoutError(f"the MLflow UI server did not answer within {timeout:.0f} s:\n{self.log_tail()}")
            if tick is not None:
                tick(waited)
            time.sleep(0.25)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """The server and every process it started (those still running)."""
        return [] if self.proc is None else _descendants(self.proc.pid, include_self=True)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server and everything it started: SIGTERM to the group, SIGKILL after ``timeout``."""
        if self.proc is None:
            return
        pids = self.pids()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        for pid in pids:  # any that left the group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.proc = None

    def __enter__(self) -> UIServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _descendants(pid: int, include_self: bool = False) -> list[int]:
    """``pid``'s live descendants (Linux ``/proc``; elsewhere only ``pid`` itself)."""
    out = [pid] if include_self and _alive(pid) else []
    todo = [pid]
    while todo:
        for c in _children(todo.pop()):
            if c not in out:
                out.append(c)
                todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; only its parent has not collected it yet
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def chuck_experiment(tracking_uri: str) -> tuple[str, str] | None:
    """(id, name) of the experiment holding the most recent run chuck logged, or None."""
    import logging

    from chuck.tracking.store import sqlite_path

    db = sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        return None  # no store yet: do not create one (MLflow would, with minutes of migrations on a busy machine)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        alembic = logging.getLogger("alembic")
        alembic.setLevel(logging.WARNING)
        from mlflow import MlflowClient

        try:
            client = MlflowClient(tracking_uri=tracking_uri)
            exps = client.search_experiments()
            runs = (
                client.search_runs(
                    [e.experiment_id for e in exps],
                    filter_string="tags.`chuck.policy_id` != ''",
                    order_by=["attributes.start_time DESC"],
                    max_results=1,
                )
                if exps
                else []
            )
        except Exception:  # noqa: BLE001 - an empty or unreadable store: open the experiment list
            return None
    if not runs:
        return None
    eid = runs[0].info.experiment_id
    return eid, next((e.name for e in exps if e.experiment_id == eid), eid)


def ui_url(base: str, experiment_id: str | None) -> str:
    """Where to point a browser: chuck's experiment on its runs view, or the experiment list."""
    return f"{base}/#/experiments/{experiment_id}/runs?{RUNS_VIEW}" if experiment_id else f"{base}/#/experiments?{RUNS_VIEW}"


def run_ui(
    tracking_uri: str,
    port: int = 5000,
    out: TextIO | None = None,
    err: TextIO | None = None,
    log_path: str | Path | None = None,
    command: list[str] | None = None,
) -> int:
    """``chuck ui``: start the server, say where it is once it answers, stop everything on Ctrl-C or SIGTERM."""
    out, err = out or sys.stdout, err or sys.stderr
    if log_path is None:
        from chuck.core.home import chuck_home

        with contextlib.suppress(OSError):
            chuck_home().mkdir(parents=True, exist_ok=True)
            log_path = chuck_home() / "ui.log"
    server = UIServer(tracking_uri, port, log_path, command)
    stopping: dict[str, int] = {}

    def on_signal(signum: int, _frame: Any) -> None:
        stopping["signal"] = signum
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    spinner = itertools.cycle("|/-\\")
    live = err.isatty()

    def tick(waited: float) -> None:
        if live:
            err.write(f"\r{next(spinner)} starting the MLflow UI on {tracking_uri} ({waited:.0f} s)")
            err.flush()

    try:
        server.start()
        if not live:
            print(f"starting the MLflow UI on {tracking_uri} (server log: {server.log_path}) ...", file=err, flush=True)
        found = chuck_experiment(tracking_uri)  # read while the server starts
        server.wait_ready(tick=tick)
        if live:
            err.write("\r" + " " * 100 + "\r")
        where = f" (experiment {found[1]!r})" if found else ""
        print(f"MLflow UI: {ui_url(server.url, found[0] if found else None)}{where}", file=out, flush=True)
        print(f"store: {tracking_uri}; server log: {server.log_path}; Ctrl-C to stop", file=out, flush=True)
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(0.5)
        print(
            f"the MLflow UI server stopped (status {server.proc.returncode if server.proc else '?'}):\n{server.log_tail()}",
            file=err,
        )
        return 1
    except KeyboardInterrupt:
        if live:
            err.write("\r")
        print("stopping the MLflow UI ...", file=err, flush=True)
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"chuck ui: {exc}", file=err)
        return 1
    finally:
        server.stop()
        for s, h in previous.items():
            signal.signal(s, h)


#: What each page of the tour must show before it counts as loaded (and is photographed).
TOUR = {
    "runs": ("Run Name",),
    "run": ("Parameters", "optimizer.lr"),
    "metrics": ("Training", "train_loss", "val_loss", "lr", "chuck.obs"),
    "decisions": ("decisions.csv", "changed", "why"),
    "timeline": ("timeline.html",),
}
#: Artifact pages (their route selects the file only on a fresh load).
ARTIFACT_FILES = {"decisions": "decisions.csv", "timeline": "timeline.html"}


def tour_run_pages(
    browser: Any,
    base_url: str,
    experiment_id: str,
    run_id: str,
    out_dir: str | Path | None = None,
    timeout: float = 180.0,
    run_name: str | None = None,
) -> dict[str, str]:
    """Visit what a person looks at in the MLflow UI for one chuck run, in a headless browser.

    The experiment's runs view (the URL ``chuck ui`` prints), the run's overview (parameters,
    description), its model metrics (the Training section), the decision table artifact and the
    interactive timeline. Each page is waited for until it shows :data:`TOUR`'s texts (the runs
    view also ``run_name`` when given: its table header renders before its rows); with
    ``out_dir``, each is saved as ``mlflow_<page>.png`` there. Returns each page's visible text
    (the browser test checks them; ``experiments/mlflow_screenshots.sh`` keeps the pictures).
    """
    run = f"{base_url}/#/experiments/{experiment_id}/runs/{run_id}"
    pages = {
        "runs": ui_url(base_url, experiment_id),
        "run": f"{run}?{RUNS_VIEW}",
        "metrics": f"{run}/model-metrics?{RUNS_VIEW}",
        "decisions": f"{run}/artifacts/chuck/decisions.csv?{RUNS_VIEW}",
        "timeline": f"{run}/artifacts/chuck/timeline.html?{RUNS_VIEW}",
    }
    # MLflow 3's assistant panel opens on a first visit and covers a third of the page: mark it seen
    browser.goto(f"{base_url}/#/")
    browser.wait_for_text("MLflow", timeout=timeout)
    browser.evaluate(
        "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
        "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false'); true"
    )
    texts = {}
    for name, url in pages.items():
        browser.goto(url, fresh=name in ARTIFACT_FILES)  # the artifact route selects its file on a fresh load
        wanted = (*TOUR[name], run_name) if name == "runs" and run_name else TOUR[name]
        texts[name] = browser.wait_for_text(*wanted, timeout=timeout)
        if name == "timeline":  # MLflow shows an HTML artifact in an iframe
            browser.wait_for("!!document.querySelector('iframe.mlflow-html-iframe')", timeout=timeout)
        browser.evaluate(  # and if it opens anyway, close it
            "(() => { const b = document.querySelector('[data-component-id=\"mlflow.assistant.chat_panel.close\"]');"
            " if (b) b.click(); return !!b; })()"
        )
        if name in ("metrics", "timeline"):
            time.sleep(3.0)  # charts and the iframe draw after their text appears
        if out_dir is not None:
            browser.screenshot(Path(out_dir) / f"mlflow_{name}.png")
    return texts
