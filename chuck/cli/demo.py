"""``chuck demo``: the same zoo task trained twice from a deliberately poor learning rate.

Arm 1 is plain AdamW; arm 2 is the same AdamW under ``ChuckOptimizer`` with the
default (learned) policy. Both runs see the same data, initialization and batch
order, are logged to MLflow (local SQLite store by default), and end in a
comparison table, what the policy did and why in words, the health report, and the
decision timeline as a PNG (losses above; lr, weight decay, clipping and dropout below;
plain AdamW in grey in every panel; each decision marked and coloured by its source, the
largest annotated with their reason). No timing is printed: on a shared machine wall
time says more about the neighbours than about chuck (docs/results.md measures the
overhead, interleaved).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from chuck.cli.config import DemoConfig  # the settings live with the other commands' (no torch for --help)
from chuck.core.defaults import DEFAULT_INTERVAL


def _train_arm(task: Any, cfg: Any, steps: int, interval: int, policy: str | None, logger: Any, desc: str) -> dict[str, Any]:
    from tqdm.auto import tqdm

    import chuck
    from chuck.zoo.loop import evaluate, train

    torch.manual_seed(cfg.seed)
    inst = task.build(cfg)
    opt: Any = inst.optimizer
    if policy is not None:  # the logger records losses and hyperparameters through chuck itself
        opt = chuck.ChuckOptimizer(
            inst.optimizer, policy, model=inst.model, total_steps=steps, interval=interval, tracking=logger
        )
    initial = dict(opt.hyperparameters) if policy is not None else {}
    hist: dict[str, list] = {"step": [], "train": [], "val_step": [], "val": [], "lr": [], "weight_decay": []}
    every = max(1, logger.loss_every)
    window: list[float] = []

    def hp_now(key: str) -> float:
        return opt.hyperparameters[key] if policy is not None else float(opt.param_groups[0].get(key, 0.0))

    def on_step(step: int, loss: torch.Tensor) -> None:
        hist["step"].append(step)
        hist["train"].append(float(loss))
        hist["lr"].append(hp_now("lr"))
        hist["weight_decay"].append(hp_now("weight_decay"))
        if policy is None:  # the plain arm logs what chuck's logger logs for the other arm, under the same names
            window.append(float(loss))
            if len(window) == every:
                logger.log_metric("Training/train_loss", sum(window) / every, step)
                window.clear()
        bar.update(1)

    def on_eval(step: int, v: float) -> None:
        hist["val_step"].append(step)
        hist["val"].append(v)
        if policy is None:
            logger.log_metric("Training/val_loss", v, step)
            logger.log_metric("Training/lr", hp_now("lr"), step)
            logger.log_metric("Training/weight_decay", hp_now("weight_decay"), step)

    with tqdm(total=steps, desc=desc, leave=True) as bar:
        train(inst, opt, steps, eval_every=interval, on_step=on_step, on_eval=on_eval)
        if steps % interval:
            v = evaluate(inst, opt)
            if policy is not None:
                opt.observe(val_loss=v)
            on_eval(steps, v)
    result = {
        "history": hist,
        "metrics": inst.metrics(),
        "final_val": hist["val"][-1],
        "best_val": min(hist["val"]),
        "final_lr": hist["lr"][-1],
        "opt": opt,
        "initial": initial,
        "dropout": float(np.mean(ps)) if (ps := [m.p for m in inst.model.modules() if isinstance(m, nn.Dropout)]) else 0.0,
    }
    if policy is not None:
        opt.close()
    else:
        logger.close()
    return result


def _plot(path: Path, plain: dict[str, Any], ch: dict[str, Any], title: str) -> None:
    """The chuck arm's decision timeline (:mod:`chuck.tracking.timeline`), with plain AdamW in grey in every panel."""
    from chuck.tracking.timeline import Series, Timeline, plot_png

    h, b = ch["history"], plain["history"]
    baseline = {
        "name": "AdamW",
        "train_loss": Series(b["step"], b["train"]),
        "val_loss": Series(b["val_step"], b["val"]),
        "lr": Series(b["step"], b["lr"]),
        "weight_decay": Series(b["step"], b["weight_decay"]),
        "dropout": Series([0, b["step"][-1]], [plain["dropout"]] * 2),
        "clip": Series([0, b["step"][-1]], [math.inf, math.inf]),  # plain AdamW never clips
    }
    tl = Timeline(
        title,
        [d.as_dict() for d in ch["opt"].decisions],
        ch["initial"],
        Series(h["step"], h["train"]),
        Series(h["val_step"], h["val"]),
        baseline=baseline,
        last_step=h["step"][-1] if h["step"] else None,
    )
    plot_png(tl, path)


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the demo; returns the two arms' results (used by the tests)."""
    import chuck
    from chuck import tracking, zoo
    from chuck.core.explain import summarize_decisions
    from chuck.core.loading import PolicyLoadError
    from chuck.tracking.logger import MLflowDecisionLogger

    steps = 60 if cfg.quick else cfg.steps
    policy_name = cfg.policy
    try:
        policy = chuck.load_policy(policy_name)
    except PolicyLoadError as exc:
        print(f"! policy {policy_name!r} unavailable ({exc}); using 'heuristic' instead")
        policy_name, policy = "heuristic", chuck.load_policy("heuristic")
    interval = policy.interval or DEFAULT_INTERVAL
    task = zoo.get_task(cfg.task)
    config = task.sample_config(np.random.default_rng(cfg.seed))
    config.optimizer, config.lr, config.label_noise = "AdamW", cfg.lr, 0.0
    uri = cfg.tracking_uri or tracking.default_tracking_uri()
    # no tracking.setup here: each logger imports MLflow, opens the store and creates its run (in an
    # experiment carrying chuck's kind tag) in its own thread, while the arms train
    print(
        f"chuck demo: {cfg.task} ({config.width}x{config.depth} {config.activation}, norm={config.norm}), "
        f"AdamW from lr={cfg.lr:g}, {steps} steps per arm; policy {policy.id}"
    )

    params = {"task": cfg.task, "seed": cfg.seed, "steps": steps, "demo.initial_lr": cfg.lr}
    plain_log = MLflowDecisionLogger(
        experiment=cfg.experiment, run_name="AdamW", tracking_uri=uri, params={**params, "optimizer": "AdamW"}
    )
    plain = _train_arm(task, config, steps, interval, None, plain_log, "AdamW        ")
    chuck_log = MLflowDecisionLogger(
        experiment=cfg.experiment, run_name=f"AdamW + chuck ({policy_name})", tracking_uri=uri, params=params
    )
    ch = _train_arm(task, config, steps, interval, policy_name, chuck_log, "AdamW + chuck")

    rows = [("AdamW", plain), (f"AdamW + chuck ({policy_name})", ch)]
    print()
    print(f"{'arm':<30} {'final val loss':>14} {'best val loss':>14} {'val acc':>8} {'final lr':>10}")
    for name, r in rows:
        acc = r["metrics"].get("val_accuracy", math.nan)
        print(f"{name:<30} {r['final_val']:>14.4f} {r['best_val']:>14.4f} {acc:>8.3f} {r['final_lr']:>10.3g}")
    decisions = ch["opt"].decisions
    by_source: dict[str, int] = {}
    for d in decisions:
        by_source[d.source] = by_source.get(d.source, 0) + 1
    lrs = [d.hyperparameters["lr"] for d in decisions] or [config.lr]
    last_clip = decisions[-1].hyperparameters["clip"] if decisions else math.inf
    print()
    print(
        f"chuck made {len(decisions)} decisions ({', '.join(f'{n} {k}' for k, n in by_source.items())}); "
        f"the lr went {config.lr:.2g} -> {lrs[-1]:.2g} (range {min(lrs):.2g}..{max(lrs):.2g}); clipping "
        + (f"on at {last_clip:.3g}" if math.isfinite(last_clip) else "off")
        + " at the end. What it did and why:"
    )
    story = summarize_decisions(list(decisions), ch["initial"])
    warmup = ch["opt"].action_spec.warmup_steps
    if warmup:  # a schedule, not a decision: say it, or the first steps' lr is unexplained
        story.insert(0, f"warmed the lr up linearly over the first {warmup} steps (the policy's warm-up, before any decision)")
    for line in story or ["held every hyperparameter: nothing it saw called for a change"]:
        print(f"  - {line}")
    if by_source.get("fallback"):
        print(
            "  ('fallback': a decision the policy did not make: its observation left the range it was trained on, "
            "or asking it failed, so the hand-written heuristic decided or chuck held)"
        )
    print()
    print(ch["opt"].health())
    out = Path(cfg.out)
    _plot(out, plain, ch, f"{cfg.task}: AdamW from lr={cfg.lr:g}, with and without chuck ({policy.id})")
    print()
    print(f"plot: {out.resolve()}  (losses above, hyperparameters below; grey: plain AdamW; vertical lines: decisions)")
    print(f"MLflow runs in experiment {cfg.experiment!r} at {uri}")
    print(f"explore them: chuck ui   (or: mlflow ui --backend-store-uri {uri} --host 127.0.0.1)")
    return {"plain": plain, "chuck": ch, "png": out, "tracking_uri": uri, "run_ids": (plain_log.run_id, chuck_log.run_id)}
