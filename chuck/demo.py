"""``chuck demo``: the same zoo task trained twice from a deliberately poor learning rate.

Arm 1 is plain AdamW; arm 2 is the same AdamW under ``ChuckOptimizer`` with the
default (learned) policy. Both runs see the same data, initialization and batch
order, are logged to MLflow (local SQLite store by default), and end in a
comparison table, a summary of chuck's decisions and a PNG with the loss
curves and the lr / weight-decay / clip trajectories, decision points marked.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class DemoConfig:
    """Settings of ``chuck demo`` (each is a flag)."""

    task: str = "cv.digits_mlp"
    """Zoo task to train."""
    lr: float = 1e-5
    """The deliberately poor initial learning rate (too low for AdamW by about two decades)."""
    steps: int = 600
    """Training steps per arm."""
    policy: str = "default"
    """chuck policy for the second arm ("default", "heuristic", a path, models:/...)."""
    seed: int = 0
    """Seed of the task instance (data subset, init, batch order)."""
    out: str = "chuck_demo.png"
    """Where the PNG goes."""
    tracking_uri: str | None = None
    """MLflow tracking URI (default: sqlite under CHUCK_HOME)."""
    experiment: str = "chuck-demo"
    """MLflow experiment."""
    quick: bool = False
    """Short budget (60 steps), for CI smoke tests."""


def _train_arm(task: Any, cfg: Any, steps: int, interval: int, policy: str | None, logger: Any, desc: str) -> dict[str, Any]:
    from tqdm.auto import tqdm

    import chuck
    from chuck.zoo.loop import evaluate, train

    torch.manual_seed(cfg.seed)
    inst = task.build(cfg)
    opt: Any = inst.optimizer
    if policy is not None:
        opt = chuck.ChuckOptimizer(
            inst.optimizer, policy, model=inst.model, total_steps=steps, interval=interval, tracking=logger
        )
    hist: dict[str, list] = {"step": [], "train": [], "val_step": [], "val": [], "lr": []}

    def lr_now() -> float:
        return opt.hyperparameters["lr"] if policy is not None else opt.param_groups[0]["lr"]

    def on_step(step: int, loss: torch.Tensor) -> None:
        hist["step"].append(step)
        hist["train"].append(float(loss))
        hist["lr"].append(lr_now())
        bar.update(1)

    def on_eval(step: int, v: float) -> None:
        hist["val_step"].append(step)
        hist["val"].append(v)
        logger.log_metric("val_loss", v, step)
        logger.log_metric("train_loss", hist["train"][-1], step)
        logger.log_metric("lr", lr_now(), step)

    t0 = time.perf_counter()
    with tqdm(total=steps, desc=desc, leave=True) as bar:
        train(inst, opt, steps, eval_every=interval, on_step=on_step, on_eval=on_eval)
        if steps % interval:
            on_eval(steps, evaluate(inst, opt))
    seconds = time.perf_counter() - t0
    metrics = inst.metrics()
    result = {
        "history": hist,
        "seconds": seconds,
        "metrics": metrics,
        "final_val": hist["val"][-1],
        "best_val": min(hist["val"]),
        "final_lr": hist["lr"][-1],
        "opt": opt,
    }
    if policy is not None:
        opt.close()
    else:
        logger.close()
    return result


def _plot(path: Path, plain: dict[str, Any], ch: dict[str, Any], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    decisions = ch["opt"].decisions
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0, 0]
    for res, name, color in ((plain, "AdamW", "tab:gray"), (ch, "AdamW + chuck", "tab:blue")):
        h = res["history"]
        ax.plot(h["step"], h["train"], color=color, alpha=0.25, lw=0.8)
        ax.plot(h["val_step"], h["val"], color=color, lw=2, label=f"{name} (val)")
    ax.set_yscale("log")
    ax.set_title("loss (thin: train minibatch, thick: validation)")
    ax.set_xlabel("step")
    ax.legend()

    steps = [d.step for d in decisions]
    for ax, key, label, log in (
        (axes[0, 1], "lr", "learning rate", True),
        (axes[1, 0], "weight_decay", "weight decay", False),
        (axes[1, 1], "clip", "gradient clip threshold (inf = off)", True),
    ):
        vals = [d.hyperparameters.get(key, math.nan) for d in decisions]
        shown = [v if math.isfinite(v) else np.nan for v in vals]
        if key == "lr":
            ax.plot(plain["history"]["step"], plain["history"]["lr"], color="tab:gray", label="AdamW")
            ax.plot(ch["history"]["step"], ch["history"]["lr"], color="tab:blue", label="AdamW + chuck")
            ax.legend()
        else:
            ax.step(steps, shown, where="post", color="tab:blue")
        for d in decisions:
            if d.source == "guardrail":
                ax.axvline(d.step, color="tab:red", alpha=0.3, lw=0.8)
        ax.scatter(steps, shown, s=10, color="tab:orange", zorder=3, label="decision")
        if log and any(np.isfinite(shown)):
            ax.set_yscale("log")
        elif key == "clip":
            ax.text(0.5, 0.5, "clipping off throughout", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(label)
        ax.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the demo; returns the two arms' results (used by the tests)."""
    import chuck
    from chuck import tracking, zoo
    from chuck.loading import PolicyLoadError
    from chuck.mlflow_logger import MLflowDecisionLogger

    steps = 60 if cfg.quick else cfg.steps
    policy_name = cfg.policy
    try:
        policy = chuck.load_policy(policy_name)
    except PolicyLoadError as exc:
        print(f"! policy {policy_name!r} unavailable ({exc}); using 'heuristic' instead")
        policy_name, policy = "heuristic", chuck.load_policy("heuristic")
    interval = policy.interval or 20
    task = zoo.get_task(cfg.task)
    config = task.sample_config(np.random.default_rng(cfg.seed))
    config.optimizer, config.lr, config.label_noise = "AdamW", cfg.lr, 0.0
    uri = cfg.tracking_uri or tracking.default_tracking_uri()
    tracking.setup(uri, cfg.experiment)
    print(
        f"chuck demo: {cfg.task} ({config.width}x{config.depth} {config.activation}, norm={config.norm}), "
        f"AdamW from lr={cfg.lr:g}, {steps} steps per arm; policy {policy.id}"
    )

    plain_log = MLflowDecisionLogger(experiment=cfg.experiment, run_name="AdamW", tracking_uri=uri)
    plain = _train_arm(task, config, steps, interval, None, plain_log, "AdamW        ")
    chuck_log = MLflowDecisionLogger(experiment=cfg.experiment, run_name=f"AdamW + chuck ({policy_name})", tracking_uri=uri)
    ch = _train_arm(task, config, steps, interval, policy_name, chuck_log, "AdamW + chuck")

    rows = [("AdamW", plain), (f"AdamW + chuck ({policy_name})", ch)]
    print()
    print(f"{'arm':<30} {'final val loss':>14} {'best val loss':>14} {'val acc':>8} {'final lr':>10} {'time s':>7}")
    for name, r in rows:
        acc = r["metrics"].get("val_accuracy", math.nan)
        print(
            f"{name:<30} {r['final_val']:>14.4f} {r['best_val']:>14.4f} {acc:>8.3f} {r['final_lr']:>10.3g} {r['seconds']:>7.1f}"
        )
    decisions = ch["opt"].decisions
    by_source: dict[str, int] = {}
    for d in decisions:
        by_source[d.source] = by_source.get(d.source, 0) + 1
    lrs = [d.hyperparameters["lr"] for d in decisions] or [config.lr]
    feats: dict[str, float] = {}
    for d in decisions:
        for k, v in d.attribution.items():
            feats[k] = feats.get(k, 0.0) + abs(v)
    top = sorted(feats.items(), key=lambda kv: -kv[1])[:5]
    print()
    print(
        f"chuck made {len(decisions)} decisions ({', '.join(f'{n} {k}' for k, n in by_source.items())}); "
        f"lr went {config.lr:.2g} -> {lrs[-1]:.2g} (range {min(lrs):.2g}..{max(lrs):.2g}); "
        f"clipping {'on at ' + format(decisions[-1].hyperparameters['clip'], '.3g') if decisions and math.isfinite(decisions[-1].hyperparameters['clip']) else 'off'} at the end"
    )
    if top:
        print("features that drove the decisions most: " + ", ".join(f"{k} ({v / max(len(decisions), 1):.2f})" for k, v in top))
    print()
    print(ch["opt"].health())
    out = Path(cfg.out)
    _plot(out, plain, ch, f"{cfg.task}: AdamW from lr={cfg.lr:g}, with and without chuck ({policy.id})")
    print()
    print(f"plot: {out.resolve()}")
    print(f"MLflow runs in experiment {cfg.experiment!r} at {uri}")
    print(f"explore them: chuck ui   (or: mlflow ui --backend-store-uri {uri} --host 127.0.0.1)")
    return {"plain": plain, "chuck": ch, "png": out, "tracking_uri": uri, "run_ids": (plain_log.run_id, chuck_log.run_id)}
