"""Cold start with Optuna: ``chuck.tune``.

Where no policy fits yet or the history has nothing similar, an Optuna study
(TPE, median pruning on the intermediate values your train function reports)
picks starting hyperparameters: learning rate, weight decay, clip threshold and,
for Adam-family optimizers, epsilon within the range the gradient-magnitude
histogram suggests (Silva & Rodriguez 2024; see
``chuck.monitors.GradientMonitor.suggested_eps_range``).

* Warm start: when a model is given, the history's suggestion and the starts of its
  best-weighted runs (what the nearest runs that ended well started with; diverged and
  collapsed ones are left out, see :mod:`chuck.history.warm_start`) are enqueued
  (``study.enqueue_trial``) before TPE samples anything, each distinct trial once;
  ``TuneResult.warm_start_basis`` says what they rest on.
* Storage: an Optuna RDB URL (default ``sqlite:///$CHUCK_HOME/optuna.db``; a
  PostgreSQL URL works the same way). Calling ``tune`` again with the same study
  name resumes: it runs only the trials still missing to reach ``n_trials``.
* Workers: any number of processes, on any machines, may run ``tune`` on the same
  study and storage at once (``chuck tune --n-workers N``; PostgreSQL across
  machines): trials are numbered by the storage, a dead worker's trial is retried
  (heartbeats), and the study stops at ``n_trials`` finished trials (see
  :mod:`chuck.tuning.study`).
* Tracking: one MLflow parent run per study, one nested run per trial. A tracking URI that
  names no MLflow store (ValueError) or a server that does not answer (ConnectionError) fails
  before the study opens; a storage that cannot be opened raises :class:`StorageError`.
* History: the best trial is written to the run history.

``train_fn(params, trial) -> float`` trains with ``params`` (a dict with ``lr``,
``weight_decay``, ``clip`` and maybe ``eps``), calls ``trial.report(value, step)``
with intermediate validation losses (it raises ``optuna.TrialPruned`` when the
trial should stop; let it propagate) and returns the final validation loss.
"""

from __future__ import annotations

import math
import os
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chuck.core.defaults import DEFAULT_INTERVAL

ADAM_FAMILY = ("Adam", "AdamW", "NAdam", "RAdam", "Adamax")


@dataclass
class TuneResult:
    best_params: dict[str, float]
    best_value: float
    study_name: str
    storage: str
    trials: int
    enqueued: list[dict[str, float]] = field(default_factory=list)
    mlflow_run_id: str | None = None
    warm_start_basis: str = ""
    """What the warm start rested on, in words (:attr:`chuck.history.Suggestion.basis`); empty without one."""


class TrialHandle:
    """What ``train_fn`` receives: report intermediate values; know the trial number."""

    def __init__(self, trial: Any, mlflow: Any | None) -> None:
        self._trial, self._mlflow = trial, mlflow
        self.number = trial.number

    def report(self, value: float, step: int) -> None:
        """Report an intermediate validation loss; raises ``optuna.TrialPruned`` if the trial should stop."""
        import optuna

        value = float(value) if math.isfinite(float(value)) else 1e12
        self._trial.report(value, step)
        if self._mlflow is not None:
            self._mlflow.log_metric("val_loss", value, step=step)
        if self._trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}")


def default_storage() -> str:
    from chuck.core.home import chuck_home

    return f"sqlite:///{chuck_home() / 'optuna.db'}"


def eps_range_from(opt: Any, widen_decades: float = 0.0) -> tuple[float, float]:
    """The epsilon search range suggested by a ChuckOptimizer's gradient histogram (optionally widened)."""
    lo, hi = opt.grad_monitor.suggested_eps_range()
    if not (lo > 0 and hi > 0):
        raise ValueError("no gradient histogram yet: run at least one decision interval first")
    f = 10.0**widen_decades
    return lo / f, hi * f


def tune(
    train_fn: Callable[[dict[str, float], TrialHandle], float],
    *,
    n_trials: int = 20,
    model: Any = None,
    optimizer: str = "AdamW",
    study_name: str = "chuck-tune",
    storage: str | None = None,
    lr_range: tuple[float, float] = (1e-5, 1.0),
    weight_decay_range: tuple[float, float] = (1e-6, 1e-1),
    clip_range: tuple[float, float] = (0.1, 100.0),
    eps_range: tuple[float, float] | None = None,
    warm_start: bool = True,
    warm_start_k: int = 3,
    tracking: bool = True,
    tracking_uri: str | None = None,
    experiment: str = "chuck-tune",
    seed: int = 0,
    n_startup_trials: int = 5,
    history: bool = True,
    timeout: float | None = None,
    progress: bool = False,
    heartbeat_interval: int = 10,
    prepare_only: bool = False,
) -> TuneResult | None:
    """Run (or resume) an Optuna study over chuck's hyperparameters. See the module docstring.

    ``heartbeat_interval``: seconds between a running trial's heartbeats; a trial silent for
    three of them belongs to a dead worker and is retried. ``prepare_only``:
    create the study, enqueue the warm start and start the MLflow parent run, run no trial
    and return ``None`` (what :func:`chuck.tuning.workers.tune_zoo_in_workers` does before starting workers).
    """
    try:
        import optuna
    except ImportError as exc:  # pragma: no cover
        raise ImportError("chuck.tune needs optuna: pip install 'chuck[all]'") from exc
    for name, (lo, hi) in (("lr_range", lr_range), ("weight_decay_range", weight_decay_range), ("clip_range", clip_range)):
        if not (0 < lo < hi):
            raise ValueError(f"{name} must satisfy 0 < low < high, got {(lo, hi)}")
    if eps_range is not None and optimizer not in ADAM_FAMILY:
        raise ValueError(f"eps_range applies to Adam-family optimizers {ADAM_FAMILY}, not {optimizer}")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int):
        raise TypeError(f"n_trials must be a whole number, got {n_trials!r}")
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    from chuck.tuning.study import claim_parent_run, counts, open_study, optimize_until

    if tracking:  # before any trial: the MLflow client would retry a dead server for minutes, then fail
        from chuck.tracking.store import check_reachable, check_tracking_uri, resolve_tracking_uri

        check_reachable(check_tracking_uri(resolve_tracking_uri(tracking_uri)))
    storage = storage or default_storage()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = open_study(
            optuna, study_name, storage, seed=seed, n_startup_trials=n_startup_trials, heartbeat_interval=heartbeat_interval
        )
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's errors for a bad URL, a locked or unopenable database
        raise StorageError(f"cannot open the Optuna storage {_redact(storage)}: {storage_problem(exc)}") from exc
    enqueued: list[dict[str, float]] = []
    basis = ""
    if warm_start and model is not None and not study.trials:
        enqueued, suggestion = _warm_start_params(
            model, optimizer, warm_start_k, lr_range, weight_decay_range, clip_range, eps_range
        )
        basis = suggestion.basis
        for params in enqueued:  # skip_if_exists: workers starting together queue each suggestion once
            study.enqueue_trial(params, user_attrs={"chuck.warm_start": True}, skip_if_exists=True)

    mlflow = None
    parent_id = None
    if tracking:
        from chuck import tracking as tr

        mlflow = tr.setup(tracking_uri, experiment)
        parent, created = claim_parent_run(mlflow, study, f"tune:{study_name}")
        parent_id = parent.info.run_id
        if created:  # params are immutable in MLflow; a resumed or extended study keeps its originals
            mlflow.log_params(
                {
                    "study": study_name,
                    "optimizer": optimizer,
                    "lr_range": str(lr_range),
                    "eps_range": str(eps_range),
                    "warm_start": warm_start and model is not None,
                }
            )
        mlflow.set_tag("chuck.n_trials_target", str(n_trials))

    def objective(trial: Any) -> float:
        params = {
            "lr": trial.suggest_float("lr", *lr_range, log=True),
            "weight_decay": trial.suggest_float("weight_decay", *weight_decay_range, log=True),
            "clip": trial.suggest_float("clip", *clip_range, log=True),
        }
        if eps_range is not None:
            params["eps"] = trial.suggest_float("eps", *eps_range, log=True)
        trial.set_user_attr("chuck.worker", f"{socket.gethostname()}:{os.getpid()}")  # who ran it (shared studies)
        if mlflow is None:
            return _score(trial, train_fn(params, TrialHandle(trial, None)))
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
            mlflow.log_params({**params, "warm_start": bool(trial.user_attrs.get("chuck.warm_start"))})
            try:
                value = _score(trial, train_fn(params, TrialHandle(trial, mlflow)))
            except optuna.TrialPruned:
                mlflow.set_tag("state", "pruned")
                raise
            mlflow.log_metric("final_val_loss", trial.user_attrs.get("chuck.loss", value))
            return value

    try:
        if prepare_only:
            return None
        optimize_until(optuna, study, objective, n_trials, timeout=timeout, catch=(FloatingPointError,), progress=progress)
        best = _best_finite(optuna, study)
        if mlflow is not None:
            mlflow.log_metrics({"best_val_loss": best.value, "best_trial": best.number})
    finally:
        if mlflow is not None:
            mlflow.end_run()
    assert best.value is not None  # a finished trial with a finite loss (_best_finite)
    result = TuneResult(
        dict(best.params), float(best.value), study_name, storage, counts(optuna, study)["finished"], enqueued, parent_id, basis
    )
    if history and model is not None:
        _write_history(result, model, optimizer)
    return result


#: What a trial whose loss is not finite (a diverged run) scores: the worst value, so that the
#: sampler learns to avoid its region (Optuna would fail the trial and learn nothing from it).
NONFINITE_SCORE = 1e12


def _score(trial: Any, value: Any) -> float:
    """The objective value of ``train_fn``'s return: its final validation loss, a number."""
    try:
        loss = float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"train_fn must return the trial's final validation loss (a number), got {type(value).__name__}: {value!r:.80}"
        ) from None
    if math.isfinite(loss):
        return loss
    trial.set_user_attr("chuck.loss", loss)  # the real value, for whoever reads the study
    return NONFINITE_SCORE


class TuneError(RuntimeError):
    """A study that cannot give a result: no trial ended with a finite loss, or its storage cannot be opened."""


class StorageError(TuneError):
    """The Optuna storage cannot be opened: a URL of no known database, a directory, a locked database."""


def storage_problem(exc: BaseException) -> str:
    """What is wrong with a storage, in one line, from the error SQLAlchemy or Optuna raised."""
    name = type(exc).__name__
    orig = getattr(exc, "orig", None)  # the database driver's own error, without SQLAlchemy's SQL and links
    if name == "NoSuchModuleError":
        return "no database driver for its scheme (use sqlite:///PATH, postgresql://..., mysql://...)"
    if name == "ArgumentError":
        return "not a database URL (use sqlite:///PATH, postgresql://..., mysql://...)"
    text = str(orig if orig is not None else exc).strip().splitlines()
    reason = text[0] if text else name
    if "unable to open database file" in reason:
        reason += " (a directory, or a folder that does not exist or cannot be written)"
    return reason


def _redact(url: str) -> str:
    from chuck.tracking.store import redact

    return redact(url)


def _best_finite(optuna: Any, study: Any) -> Any:
    """The best trial with a finite loss; a clear error when there is none."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    finite = [t for t in complete if t.value is not None and t.value < NONFINITE_SCORE]
    if not finite:
        states = Counter(t.state.name.lower() for t in study.trials)
        diverged = len(complete) - len(finite)
        raise TuneError(
            f"no trial of study {study.study_name!r} ended with a finite loss "
            f"({dict(states)}; {diverged} returned nan or inf): every setting tried diverged or failed. "
            "Narrow lr_range toward smaller lrs, or check train_fn."
        )
    return min(finite, key=lambda t: t.value)  # the study minimizes the loss


def _clip(v: float, lo: float, hi: float) -> float:
    return min(max(v, lo), hi)


#: Significant digits two warm-start trials are compared at: trials that print the same (``chuck tune``
#: prints 3 digits) are one trial, enqueued once.
WARM_START_DIGITS = 3


def _same_trial_key(params: dict[str, float]) -> tuple[str, ...]:
    return tuple(f"{k}={v:.{WARM_START_DIGITS}g}" for k, v in sorted(params.items()))


def _warm_start_params(model, optimizer, k, lr_range, wd_range, clip_range, eps_range) -> tuple[list[dict[str, float]], Any]:
    """Trials to enqueue before TPE samples anything, and the suggestion they come from.

    First the history's suggestion (what the nearest runs that ended well started with, weighted
    by how they ended: :func:`chuck.history.suggest_hyperparameters`), then the best-weighted of
    those runs' own starts, ``k`` trials at most. A trial repeats a run's *start*
    (:func:`chuck.history.start_value`), never the lr it ended on after a cooldown. Diverged and
    collapsed runs never seed a trial. A trial equal to an earlier one to :data:`WARM_START_DIGITS`
    significant digits in every value (after clipping to the search ranges) is left out: several runs
    that started alike (or a suggestion resting on one run) seed one trial, not copies.
    """
    from chuck.history import fingerprint, rank_runs, suggest_from_fingerprint

    fp = fingerprint(model, None) | {"optimizer": optimizer}
    suggestion = suggest_from_fingerprint(fp)
    if suggestion.lr is None:
        return [], suggestion
    used, _ = rank_runs(fp)
    candidates = [(suggestion.lr, suggestion.weight_decay, suggestion.clip)]
    candidates += [(r.lr, r.weight_decay, r.clip) for r in sorted(used, key=lambda r: -r.weight) if r.lr]
    out: list[dict[str, float]] = []
    seen: set[tuple[str, ...]] = set()
    for lr, wd, clip in candidates:
        params = {
            "lr": _clip(lr, *lr_range),
            "weight_decay": _clip(wd or wd_range[0], *wd_range),
            "clip": _clip(clip if clip and math.isfinite(clip) else clip_range[1], *clip_range),
        }
        if eps_range is not None:
            params["eps"] = math.sqrt(eps_range[0] * eps_range[1])
        if _same_trial_key(params) not in seen:
            seen.add(_same_trial_key(params))
            out.append(params)
        if len(out) == k:
            break
    return out, suggestion


def _write_history(result: TuneResult, model: Any, optimizer: str) -> None:
    import time
    import uuid
    import warnings

    from chuck.history import RunRecord, fingerprint, write_record

    hp = {"lr": result.best_params["lr"], "weight_decay": result.best_params["weight_decay"], "clip": result.best_params["clip"]}
    try:
        write_record(
            RunRecord(
                run_id=uuid.uuid4().hex,
                created=time.time(),
                policy_id="optuna",
                fingerprint=fingerprint(model, None) | {"optimizer": optimizer},
                initial=hp,
                final=hp,
                outcome={
                    "best_val_loss": result.best_value,
                    "final_val_loss": result.best_value,
                    "diverged": False,
                    "steps": 0,
                    "trials": result.trials,
                },
                decisions={},
                label=f"tune:{result.study_name}",
                lr={"start": hp["lr"]},
            )
        )
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"chuck.tune: could not write the history record: {exc}", RuntimeWarning, stacklevel=3)


#: Instance settings that ``chuck tune`` does not report as the instance: the trials set them.
TUNED_SETTINGS = ("lr", "lr_regime", "weight_decay", "optimizer")


@dataclass
class ZooInstance:
    """The one instance of a zoo task that ``chuck tune --task`` tunes, and how it was drawn.

    A zoo task is a family: :meth:`chuck.zoo.Task.sample_config` draws width, depth,
    activation, normalization, batch size, data fraction, ... from its seed. Tuning one
    of them without saying which left the result unexplained, hence
    :meth:`describe` and ``--instance-seed``.
    """

    task: Any
    config: Any
    instance_seed: int
    steps: int

    def settings(self) -> dict[str, Any]:
        """The instance's sampled settings, without the ones the trials set (:data:`TUNED_SETTINGS`)."""
        out = {k: v for k, v in self.config.as_dict().items() if k not in TUNED_SETTINGS}
        extra = out.pop("extra", None) or {}
        return {**out, **extra}

    def describe(self) -> str:
        def fmt(v: Any) -> str:
            return f"{v:.3g}" if isinstance(v, float) else str(v)

        listed = ", ".join(f"{k}={fmt(v)}" for k, v in self.settings().items())
        return (
            f"{self.task.id} instance (--instance-seed {self.instance_seed}): {listed}; "
            f"{self.steps} steps per trial with {self.config.optimizer}"
        )


def zoo_instance(task_id: str, instance_seed: int = 0, steps: int | None = None, optimizer: str = "AdamW") -> ZooInstance:
    """The instance of zoo task ``task_id`` that ``instance_seed`` draws (the same one every time).

    ``steps``: training steps per trial, at least 1 (``None``: the task's budget).
    """
    import numpy as np

    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a whole number >= 1 (or None for the task's budget), got {steps!r}")

    from chuck import zoo

    task = zoo.get_task(task_id)
    cfg = task.sample_config(np.random.default_rng(instance_seed))
    cfg.optimizer = optimizer
    return ZooInstance(task, cfg, instance_seed, steps or task.budget)


def zoo_train_fn(
    task_id: str,
    seed: int = 0,
    steps: int | None = None,
    interval: int = DEFAULT_INTERVAL,
    optimizer: str = "AdamW",
    policy: str = "constant",
    instance_seed: int | None = None,
) -> tuple[Callable[[dict[str, float], TrialHandle], float], Any]:
    """A ``train_fn`` that trains one fixed instance of a zoo task (and that instance's model, for warm starts).

    The instance is the one :func:`zoo_instance` draws from ``instance_seed`` (default:
    ``seed``); the same instance (data subset, init, batch order) is rebuilt for every trial,
    so trials differ only by their hyperparameters.
    """
    import torch

    import chuck
    from chuck.zoo.loop import evaluate, train

    inst0 = zoo_instance(task_id, seed if instance_seed is None else instance_seed, steps, optimizer)
    task, cfg, budget = inst0.task, inst0.config, inst0.steps
    torch.manual_seed(cfg.seed)
    probe_model = task.build(cfg).model

    def train_fn(params: dict[str, float], trial: TrialHandle) -> float:
        cfg.lr, cfg.weight_decay = params["lr"], params["weight_decay"]
        torch.manual_seed(cfg.seed)
        inst = task.build(cfg)
        if "eps" in params:
            for g in inst.optimizer.param_groups:
                g["eps"] = params["eps"]
        opt = chuck.ChuckOptimizer(
            inst.optimizer, policy, model=inst.model, interval=interval, max_grad_norm=params["clip"], history=False
        )
        vals: list[float] = []

        def on_eval(step: int, v: float) -> None:
            vals.append(v)
            if math.isfinite(v):
                trial.report(v, step)

        train(inst, opt, budget, eval_every=interval, on_eval=on_eval, until=lambda: bool(vals) and not math.isfinite(vals[-1]))
        final = evaluate(inst, opt)
        return final if math.isfinite(final) else 1e12

    return train_fn, probe_model
