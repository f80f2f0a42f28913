"""What the default's explanation of a decision costs: one backward pass for all action dimensions
against one per dimension, timed in one process.

A learned policy explains each decision by gradient x input of its actor's outputs on the normalized
features (``chuck.policies.learned.ActorNetwork.attributions``). This times that call on the shipped
default's actor against the same attribution taken with one backward pass per output (the form it had
before), interleaved in rounds so machine noise hits both alike, and prints the ratio of the medians.

    python experiments/bench_explain.py            # about 10 seconds
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

import chuck
from chuck.policies.learned import ActorNetwork


def one_pass_per_output(actor: ActorNetwork, obs: torch.Tensor) -> np.ndarray:
    """The attribution with one backward pass per output (the reference the batched pass replaced)."""
    rows = []
    for d in range(actor.action_net.out_features):
        z = actor.normalize(obs).requires_grad_(True)
        (grad,) = torch.autograd.grad(actor.action_net(actor.policy_net(z))[0, d], z)
        row = (grad * z).detach().reshape(-1).numpy()
        total = float(np.abs(row).sum())
        rows.append(row / total if total > 0 else np.zeros_like(row))
    return np.stack(rows)


def _ms_per_call(fn: Callable[[], object], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--calls", type=int, default=200, help="calls per arm and round")
    args = ap.parse_args()
    torch.set_num_threads(1)
    actor = chuck.load_policy("default").actor
    rng = np.random.default_rng(0)
    observations = [torch.as_tensor(rng.normal(size=(1, actor.obs_mean.numel())).astype(np.float32)) for _ in range(8)]
    worst = max(float(np.abs(actor.attributions(o) - one_pass_per_output(actor, o)).max()) for o in observations)
    obs = observations[0]
    arms = {"one pass per output": lambda: one_pass_per_output(actor, obs), "one pass for all": lambda: actor.attributions(obs)}
    for fn in arms.values():
        _ms_per_call(fn, 50)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(args.rounds):
        for name in list(arms) if r % 2 == 0 else list(reversed(arms)):
            times[name].append(_ms_per_call(arms[name], args.calls))
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, ms in medians.items():
        print(f"{name:22s} {ms:.3f} ms per decision (median of {args.rounds} rounds)")
    print(
        f"speed-up {medians['one pass per output'] / medians['one pass for all']:.2f}x; largest difference between the two: {worst:.1e}"
    )


if __name__ == "__main__":
    main()
