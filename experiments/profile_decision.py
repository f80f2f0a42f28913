"""Where chuck's per-decision time goes, on the overhead benchmark's MLP.

Every method of the monitor suite, the controller and the built-in monitors that runs around a
decision is wrapped with a wall-clock timer (no profiler: cProfile's own cost would swamp methods
of a few microseconds), the MLP of ``bench_overhead.py`` trains for ``--steps`` steps under
``ChuckOptimizer("heuristic")``, and each method's total is printed per decision. Nested calls
are included in their callers (``MonitorSuite.on_decision`` holds ``GradientMonitor.on_decision``).

    python experiments/profile_decision.py                    # 4,000 steps, about 10 seconds
    python experiments/profile_decision.py --policy default   # the shipped policy (its act and explain timed too)
"""

from __future__ import annotations

import argparse
import collections
import functools
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from bench_overhead import make_mlp

import chuck
from chuck.core.controller import Controller
from chuck.monitors.activations import ActivationMonitor
from chuck.monitors.gradients import GradientMonitor
from chuck.monitors.loss import LossMonitor
from chuck.monitors.stepsize import StepSizeMonitor
from chuck.monitors.suite import MonitorSuite
from chuck.monitors.weights import WeightMonitor
from chuck.policies.learned import LearnedPolicy

SECONDS: collections.Counter[str] = collections.Counter()
CALLS: collections.Counter[str] = collections.Counter()
TIMED = {
    MonitorSuite: ("before_update", "after_update", "on_decision", "arm", "stats", "on_step"),
    Controller: ("decide", "observation", "ask", "apply", "record"),
    GradientMonitor: ("on_decision", "stats", "_histogram", "_snr"),
    WeightMonitor: ("before_update", "after_update", "on_decision", "stats"),
    StepSizeMonitor: ("before_update", "after_update", "on_decision", "stats"),
    ActivationMonitor: ("arm", "on_decision", "stats"),
    LossMonitor: ("stats",),
    LearnedPolicy: ("act", "explain"),
}


def _timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SECONDS[label] += time.perf_counter() - t0
            CALLS[label] += 1

    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--policy", default="heuristic", help="the policy chuck runs ('default': the shipped one)")
    args = ap.parse_args()
    for cls, names in TIMED.items():
        for name in names:
            setattr(cls, name, _timed(f"{cls.__name__}.{name}", getattr(cls, name)))
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = make_mlp()
    opt = chuck.ChuckOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), args.policy, model=model, history=False)
    xs, ys = [torch.randn(32, 64) for _ in range(50)], [torch.randint(0, 10, (32,)) for _ in range(50)]

    def train(steps: int) -> None:
        for i in range(steps):
            loss = F.cross_entropy(model(xs[i % 50]), ys[i % 50])
            loss.backward()
            opt.step(loss=loss)
            opt.zero_grad()

    train(400)  # warm caches and the monitors' windows
    SECONDS.clear()
    CALLS.clear()
    t0 = time.perf_counter()
    train(args.steps)
    per_step = (time.perf_counter() - t0) / args.steps
    decisions = CALLS["Controller.decide"]
    print(f"{per_step * 1e3:.3f} ms per step under chuck, {decisions} decisions in {args.steps} steps")
    for label, total in SECONDS.most_common():
        print(f"{label:34s} {total / decisions * 1e3:7.3f} ms per decision ({CALLS[label]} calls)")


if __name__ == "__main__":
    main()
