"""One evaluation run: an arm trains one task instance through the deployment path.

An *instance* is ``(task, seed, base)``: ``task.sample_config(default_rng(seed))`` with the base
optimizer forced to ``base`` (``RunSpec.base``, AdamW unless the evaluation names others, see
:mod:`chuck.evaluation.bases`). Every arm builds it after ``torch.manual_seed(config.seed)``, so
data, initialization and batch order are the same for all arms (common random numbers), and
trains it with :func:`chuck.zoo.loop.train`, the loop every other chuck workflow uses.

Arms:

* ``adamw``: the instance's base optimizer (AdamW by default) at the starting lr, constant.
* ``cosine``: the base optimizer + ``CosineAnnealingLR`` over the budget.
* ``plateau``: the base optimizer + ``ReduceLROnPlateau(factor=0.5, patience=2)`` on each evaluation.
* ``schedulefree``: ``schedulefree.AdamWScheduleFree`` (Defazio et al. 2024) at the starting
  lr, warm-up 5% of the budget, evaluated on its averaged weights.
* ``prodigy``: ``prodigyopt.Prodigy`` (Mishchenko & Defazio 2024) at ``lr=1.0`` + cosine, as
  its authors recommend. Prodigy estimates its own step size, so it ignores the starting
  lr: it runs once per instance and that run stands for every starting lr. Its multiplier
  is not swept (see ``chuck.evaluation.oracle``).
* ``prodigy-sf``: ``prodigyplus.ProdigyPlusScheduleFree`` (Prodigy's step-size estimate on
  schedule-free AdamW; package ``prodigy-plus-schedule-free``) at ``lr=1.0``, evaluated on its
  averaged weights (its ``train()``/``eval()``); lr-free like ``prodigy``.
* ``ldog``: ``dog.LDoG`` (Ivgi et al. 2023, "DoG is SGD's Best Friend", layer-wise; package
  ``dog-optimizer``) at ``lr=1.0``, without the paper's optional weight averaging; lr-free.
* ``chuck:SPEC``: ``ChuckOptimizer(base, policy=SPEC, model=..., total_steps=budget,
  history=False)`` with its OOD fallback, validation reported through ``observe``;
  ``chuck:SPEC/no-observe`` never calls ``observe``.
"""

from __future__ import annotations

import contextlib
import math
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from chuck.zoo import get_task, loop

BASELINES = ("adamw", "cosine", "plateau", "schedulefree", "prodigy", "prodigy-sf", "ldog")
#: Baselines that need a package outside chuck's core, with the module to import.
BASELINE_PACKAGES = {"schedulefree": "schedulefree", "prodigy": "prodigyopt", "prodigy-sf": "prodigyplus", "ldog": "dog"}
#: Baselines that estimate their own step size: one run per instance stands for every starting lr.
LR_FREE = ("prodigy", "prodigy-sf", "ldog")
CHUCK_PREFIX = "chuck:"
NO_OBSERVE_SUFFIX = "/no-observe"
#: Validation every this many steps (what ReduceLROnPlateau and ``observe`` receive).
EVAL_EVERY = 20
#: A run whose final loss exceeds this multiple of max(initial loss, loss reference) diverged
#: (the meta-environment's divergence threshold).
DIVERGENCE_FACTOR = 3.0
#: The regret (and harm) charged for a run that diverged or crashed.
FAILED_REGRET = 100.0
#: Prodigy's lr multiplier (the value its README recommends); the run ignores the starting lr.
PRODIGY_LR = 1.0


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs for one run (picklable).

    Attributes:
        task_id: zoo task id.
        seed: instance seed (``sample_config(default_rng(seed))``).
        arm: a baseline name or ``chuck:SPEC[/no-observe]``.
        lr: the base optimizer's starting lr.
        steps: training steps (the task's budget times ``budget_scale``).
        policy: for chuck arms, where the policy loads from (``models:/`` URIs resolved to a path).
        task: the task object itself, for tasks registered at runtime that a fresh worker
            process cannot look up by id; ``None`` for zoo and entry-point tasks.
        lr_scale: multiplies the lr the run trains at (Prodigy's multiplier for ``prodigy``);
            1 except in the A/A replays of ``chuck.evaluation.resolution``.
        base: the base optimizer of the ``adamw``, ``cosine``, ``plateau`` and chuck arms, one of
            ``chuck.zoo.task.BASE_OPTIMIZERS`` (the lr-free and schedule-free baselines bring their own).
    """

    task_id: str
    seed: int
    arm: str
    lr: float
    steps: int
    policy: str | None = None
    task: Any = None
    lr_scale: float = 1.0
    base: str = "AdamW"


def is_chuck_arm(arm: str) -> bool:
    return arm.startswith(CHUCK_PREFIX)


def chuck_arm(policy: str, observe: bool) -> str:
    return CHUCK_PREFIX + policy + ("" if observe else NO_OBSERVE_SUFFIX)


def effective_lr(arm: str, lr: float) -> float:
    """The lr that identifies a run: Prodigy's runs do not depend on the starting lr."""
    return PRODIGY_LR if arm in LR_FREE else float(lr)


def run_id(arm: str, lr: float) -> str:
    """The identity of a run within an instance: equal ids train identically."""
    return f"{arm}@{effective_lr(arm, lr)!r}"


def instance_config(task: Any, seed: int, base: str = "AdamW"):
    """The instance's sampled settings with the base optimizer forced to ``base`` (lr set per run)."""
    cfg = task.sample_config(np.random.default_rng(seed))
    cfg.optimizer = base
    return cfg


def steps_for(task: Any, budget_scale: float) -> int:
    return max(2, int(round(task.budget * budget_scale)))


def init_worker() -> None:
    """Pool initializer: one torch thread per worker (the pool supplies the parallelism)."""
    torch.set_num_threads(1)


def _groups(base: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [{"params": g["params"], "weight_decay": g.get("weight_decay", 0.0)} for g in base.param_groups]


def _make_arm(spec: RunSpec, inst: Any) -> tuple[Any, Any]:
    """The optimizer (and scheduler) for this arm on a freshly built instance."""
    base, steps = inst.optimizer, spec.steps
    arm = spec.arm
    if arm == "adamw":
        return base, None
    if arm == "cosine":
        return base, torch.optim.lr_scheduler.CosineAnnealingLR(base, T_max=steps)
    if arm == "plateau":
        return base, torch.optim.lr_scheduler.ReduceLROnPlateau(base, factor=0.5, patience=2)
    if arm == "schedulefree":
        import schedulefree

        opt = schedulefree.AdamWScheduleFree(_groups(base), lr=spec.lr * spec.lr_scale, warmup_steps=max(1, steps // 20))
        opt.train()
        return opt, None
    if arm == "prodigy":
        from prodigyopt import Prodigy

        opt = Prodigy(_groups(base), lr=PRODIGY_LR * spec.lr_scale)
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    if arm == "prodigy-sf":
        from prodigyplus import ProdigyPlusScheduleFree

        opt = ProdigyPlusScheduleFree(_groups(base), lr=PRODIGY_LR * spec.lr_scale)
        opt.train()
        return opt, None
    if arm == "ldog":
        from dog import LDoG

        return LDoG(_groups(base), lr=PRODIGY_LR * spec.lr_scale), None
    if is_chuck_arm(arm):
        import chuck

        opt = chuck.ChuckOptimizer(base, policy=spec.policy, model=inst.model, total_steps=steps, history=False)
        opt.advise = False  # a benchmark run is nobody's loop: a diverging arm is a result, not advice
        return opt, None
    raise ValueError(f"unknown arm {arm!r}")


def run_one(spec: RunSpec) -> dict[str, Any]:
    """Train one arm on one instance; never raises (a crash is reported in ``error``).

    Returns ``final_loss``, ``initial_loss``, ``loss_reference``, ``diverged``, ``error``
    (``""`` when none) and ``seconds``.
    """

    out: dict[str, Any] = {
        "final_loss": math.nan,
        "initial_loss": math.nan,
        "loss_reference": math.nan,
        "diverged": False,
        "error": "",
        "seconds": 0.0,
    }
    t0 = time.perf_counter()
    opt = None
    try:
        task = spec.task if spec.task is not None else get_task(spec.task_id)
        cfg = instance_config(task, spec.seed, spec.base)
        cfg.lr = float(spec.lr) * spec.lr_scale
        torch.manual_seed(cfg.seed)
        inst = task.build(cfg)
        out["loss_reference"] = float(inst.loss_reference)
        opt, scheduler = _make_arm(spec, inst)
        initial = loop.evaluate(inst, opt)
        out["initial_loss"] = initial
        res = loop.train(
            inst, opt, spec.steps, eval_every=EVAL_EVERY, observe=not spec.arm.endswith(NO_OBSERVE_SUFFIX), scheduler=scheduler
        )
        final = res.val_losses[-1] if res.val_steps and res.val_steps[-1] == spec.steps else loop.evaluate(inst, opt)
        out["final_loss"] = final
        scale = initial if math.isfinite(initial) else out["loss_reference"]
        out["diverged"] = bool(not math.isfinite(final) or final > DIVERGENCE_FACTOR * max(scale, out["loss_reference"]))
    except Exception as exc:  # noqa: BLE001 - a crashing arm is a result (regret 100), never dropped
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
        out["error"] = f"{type(exc).__name__}: {exc}{where}"[:500]
    finally:
        if opt is not None and hasattr(opt, "close"):
            with contextlib.suppress(Exception):  # closing must not turn a result into a crash
                opt.close()
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def failed(result: dict[str, Any]) -> bool:
    return bool(result.get("error")) or bool(result.get("diverged"))


def effective_loss(result: dict[str, Any]) -> float:
    """The final loss, or the divergence cap for a diverged run, ``inf`` for a crash."""
    if result.get("error"):
        return math.inf
    final = float(result["final_loss"])
    if result.get("diverged"):
        init, ref = float(result["initial_loss"]), float(result["loss_reference"])
        base = init if math.isfinite(init) else ref
        cap = DIVERGENCE_FACTOR * max(base, ref)
        return cap if math.isfinite(cap) else math.inf
    return final


def loss_ratio(result: dict[str, Any], reference: float) -> float:
    """A run's final loss over a reference loss (regret, harm); :data:`FAILED_REGRET` for a failed run."""
    return FAILED_REGRET if failed(result) else float(result["final_loss"]) / max(reference, 1e-12)
