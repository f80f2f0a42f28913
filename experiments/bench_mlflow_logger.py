"""What MLflow tracking costs a run: the logger's start, its per-step cost and its close, on a local SQLite store.

Three measurements, each printed and written to ``docs/results/mlflow_logger.json``:

* **start and close**, each in a fresh Python process (as a user's script meets them: nothing
  imported yet but torch and chuck), against a store that does not exist yet (``fresh``: the
  first run ever under a ``CHUCK_HOME``) and against one that does (``existing``). ``start``
  is the time ``MLflowDecisionLogger(...)`` holds the caller; ``ready`` the time until the
  run exists in MLflow (the logger's own thread imports MLflow and creates it while the
  steps run); ``close`` the time ``opt.close()`` holds the caller (the last metrics, the
  decision table and the timeline sent); ``train`` the wall time of the tracked steps in
  between (``--steps``, about 6 s here: a run shorter than MLflow's import waits for it at
  close), against ``bare`` for the same steps untracked in the same process before;
  ``total`` is start + train + close. The median over ``--repeats`` processes is reported,
  with every process's figures.
* **per-step cost**: in one process, the same loop (``ChuckOptimizer("heuristic")`` on a small
  MLP whose steps take about a millisecond, a decision every 20 steps, a validation loss every
  20) on four identical models, run interleaved in blocks of whole decision intervals: bare
  AdamW, chuck untracked, chuck tracked (a started logger on an existing store) and chuck
  tracked with ``log_observation=False`` (10 metrics a decision instead of 50). A tracked
  block ends with ``logger.flush()``, which sends what the block logged (its sender thread
  otherwise sends every second, whichever arm is running then): the ratio carries the cost of
  sending, not only of queueing. Per round, the ratio of two arms' block times; the geometric
  mean over rounds with a 95% bootstrap interval over rounds.

    python experiments/bench_mlflow_logger.py                  # about 8 minutes on 2 cores
    python experiments/bench_mlflow_logger.py --repeats 1 --rounds 6   # quicker
    python experiments/bench_mlflow_logger.py --out /tmp/x.json        # somewhere else

Wall times on a shared machine move with its neighbours: compare figures from one run of
this script, and read the per-step figure as a ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "results" / "mlflow_logger.json"
INTERVAL = 20  # chuck's default decision interval (chuck.core.defaults.DEFAULT_INTERVAL)


def _model(seed: int = 0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def _data(n: int = 2048):
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 64, generator=g)
    return x, (x[:, :10] * torch.arange(1, 11)).argmax(dim=1)


def _steps(opt, model, data, start: int, stop: int, chuck_opt: bool) -> None:
    import torch.nn.functional as F

    x, y = data
    for s in range(start, stop):
        i = (s * 32) % (len(x) - 32)
        loss = F.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
        loss.backward()
        if chuck_opt:
            opt.step(loss=loss)
        else:
            opt.step()
        opt.zero_grad()
        if chuck_opt and s % 20 == 19:
            opt.observe(val_loss=float(loss.detach()) * 1.1)


# -- start and close, in a fresh process --------------------------------------------------------
def child(uri: str, steps: int) -> dict[str, float]:
    """One process's start, train and close figures (``--child``)."""
    import torch

    import chuck
    from chuck.tracking.logger import MLflowDecisionLogger

    data = _data()
    model = _model()
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-3), "heuristic", model=model, interval=INTERVAL, history=False
    )
    t0 = time.perf_counter()
    _steps(opt, model, data, 0, steps, True)
    bare = time.perf_counter() - t0
    opt.close()

    import threading

    t0 = time.perf_counter()
    logger = MLflowDecisionLogger(experiment="bench", run_name="bench", tracking_uri=uri)
    start = time.perf_counter() - t0
    ready = {"s": start}  # a logger that creates its run in the constructor is ready when it returns
    connected = getattr(logger, "_connected", None)
    if connected is not None:  # the run is created by the sender thread: note when that is done
        threading.Thread(target=lambda: (connected.wait(), ready.update(s=time.perf_counter() - t0)), daemon=True).start()
    model = _model()
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-3),
        "heuristic",
        model=model,
        interval=INTERVAL,
        history=False,
        tracking=logger,
    )
    t0 = time.perf_counter()
    _steps(opt, model, data, 0, steps, True)
    train = time.perf_counter() - t0
    t0 = time.perf_counter()
    opt.close()
    close = time.perf_counter() - t0
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED", run.info.status
    assert client.list_artifacts(logger.run_id, "chuck"), "the decision table and timeline reached the run"
    return {"start": start, "ready": ready["s"], "train": train, "bare": bare, "close": close, "total": start + train + close}


def start_and_close(repeats: int, steps: int) -> dict[str, dict]:
    out: dict[str, dict] = {}
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with tempfile.TemporaryDirectory(prefix="bench-mlflow-") as tmp:
        for store in ("fresh", "existing"):
            runs = []
            for r in range(repeats):
                db = Path(tmp) / (f"fresh{r}.db" if store == "fresh" else "existing.db")
                if store == "existing" and r == 0:  # create it once, outside the timed processes
                    subprocess.run(
                        [sys.executable, __file__, "--child", f"sqlite:///{db}", "--steps", str(2 * INTERVAL)],
                        env=env,
                        check=True,
                        capture_output=True,
                    )
                home = Path(tmp) / f"home-{store}-{r}"
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", f"sqlite:///{db}", "--steps", str(steps)],
                    env={**env, "CHUCK_HOME": str(home)},
                    capture_output=True,
                    text=True,
                )
                if proc.returncode:
                    raise RuntimeError(proc.stderr[-3000:])
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(f"  {store:8s} process {r}: " + ", ".join(f"{k} {v:.2f} s" for k, v in runs[-1].items()), flush=True)
            out[store] = {"median": {k: statistics.median(x[k] for x in runs) for k in runs[0]}, "runs": runs}
    return out


# -- per-step cost, interleaved ------------------------------------------------------------------
def _geo_ci(ratios: list[float], seed: int = 0) -> tuple[float, float, float]:
    logs = [math.log(r) for r in ratios]
    rng = random.Random(seed)
    boots = sorted(statistics.fmean(rng.choices(logs, k=len(logs))) for _ in range(2000))
    return math.exp(statistics.fmean(logs)), math.exp(boots[50]), math.exp(boots[1949])


def per_step(rounds: int, block: int) -> dict[str, object]:
    import torch

    import chuck
    from chuck.tracking.logger import MLflowDecisionLogger

    data = _data()
    with tempfile.TemporaryDirectory(prefix="bench-mlflow-") as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        loggers = {
            name: MLflowDecisionLogger(
                experiment="bench",
                run_name=name,
                tracking_uri=uri,
                spool_dir=Path(tmp) / "spool",
                flush_every=3600,
                log_observation=name == "tracked",
            )
            for name in ("tracked", "tracked_no_obs")
        }
        arms: dict[str, tuple[Any, Any, bool]] = {}
        for name in ("bare", "untracked", "tracked", "tracked_no_obs"):
            model = _model()
            base = torch.optim.AdamW(model.parameters(), lr=1e-3)
            if name == "bare":
                arms[name] = (base, model, False)
            else:
                opt = chuck.ChuckOptimizer(
                    base, "heuristic", model=model, interval=INTERVAL, history=False, tracking=loggers.get(name)
                )
                arms[name] = (opt, model, True)
        for opt, model, is_chuck in arms.values():  # warm-up: one block each, untimed
            _steps(opt, model, data, 0, block, is_chuck)
        for logger in loggers.values():
            logger.flush()
        times: dict[str, list[float]] = {k: [] for k in arms}
        step = block
        for r in range(rounds):
            order = list(arms) if r % 2 == 0 else list(reversed(arms))
            for name in order:
                opt, model, is_chuck = arms[name]
                t0 = time.perf_counter()
                _steps(opt, model, data, step, step + block, is_chuck)
                if name in loggers:
                    loggers[name].flush()  # what the block logged, sent: its cost is the tracked arm's
                times[name].append((time.perf_counter() - t0) / block)
            step += block
        for opt, _, is_chuck in arms.values():
            if is_chuck:
                opt.close()
    out: dict[str, object] = {
        "rounds": rounds,
        "block_steps": block,
        "ms_per_step": {k: 1e3 * statistics.median(v) for k, v in times.items()},
    }
    for a, b in (("tracked", "untracked"), ("tracked_no_obs", "untracked"), ("tracked", "bare"), ("untracked", "bare")):
        g, lo, hi = _geo_ci([x / y for x, y in zip(times[a], times[b])])
        out[f"{a}/{b}"] = {"ratio": g, "ci95": [lo, hi]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per store (start, close)")
    ap.add_argument("--steps", type=int, default=6000, help="training steps of the tracked run in each process (about 6 s here)")
    ap.add_argument("--rounds", type=int, default=12, help="interleaved rounds of the per-step comparison")
    ap.add_argument("--block", type=int, default=100, help="steps per block (whole decision intervals)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--child", metavar="URI", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return
    print(f"start and close, {args.repeats} fresh process(es) per store, {args.steps} tracked steps each:", flush=True)
    sc = start_and_close(args.repeats, args.steps)
    print(f"per-step cost, {args.rounds} interleaved rounds of {args.block} steps:", flush=True)
    ps = per_step(args.rounds, args.block)
    for store, res in sc.items():
        m = res["median"]
        print(
            f"{store:8s} store: start {m['start']:.2f} s, close {m['close']:.2f} s; "
            f"{m['train']:.2f} s of tracked training ({m['bare']:.2f} s untracked), {m['total']:.2f} s in all (medians)"
        )
    for key in ("tracked/untracked", "tracked_no_obs/untracked", "tracked/bare", "untracked/bare"):
        r = ps[key]
        print(f"per step {key}: {r['ratio']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]")  # type: ignore[index]
    result = {
        "command": "python experiments/bench_mlflow_logger.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "start_and_close_s": sc,
        "per_step": ps,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
