"""What an evaluation can resolve: its A/A control, the references replayed.

Regret and harm divide one run's final loss by a reference chosen as the best of several
runs of the same instance: the oracle is the lowest of the 19-run sweep, the harm reference
the constant-AdamW run at the lr whose run ended lowest. Two things limit what such ratios
can say about a policy, and neither is the policy's doing:

* **chaos**: a training run can be sensitive to the smallest perturbation; two runs that
  differ in the last bits of their step sizes end at losses that differ by percents, or by
  factors where the loss ends near zero;
* **selection** (the winner's curse): a reference that is the minimum over noisy runs sits
  below what its own configuration gives on average, so even that configuration, trained
  again, lands above it.

:func:`replay_references` measures both at once. For every instance it trains the oracle's
winning run and the best-constant-lr AdamW run again with the lr multiplied by ``1 + eps``
for each ``eps`` (default ``+1e-3`` and ``-1e-3``: a change far finer than any schedule
decision; for a Prodigy winner its lr multiplier), and reports their regret and harm exactly
as an arm's are reported. A policy that *knew* the best configuration would score about the
replays' figures, so targets tighter than them (a share of runs within 10% of the oracle, a
share of harm probes above 1.05) are below what the benchmark resolves. A replay at
``eps = 0`` is also run: it must reproduce the reference bit for bit, else the cache is stale
or the runs are not deterministic, and the replays would measure that instead
(:class:`Resolution` ``.reproduced``).
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import chuck.zoo as zoo
from chuck.evaluation.oracle import ORACLE_LRS, OracleCache, instance_key, oracle_runs, sweep_winners
from chuck.evaluation.runs import (
    RunSpec,
    effective_loss,
    init_worker,
    instance_config,
    loss_ratio,
    run_id,
    run_one,
    steps_for,
)
from chuck.evaluation.schedule import InlineExecutor, worker_context
from chuck.evaluation.stats import HARM_THRESHOLD, ArmStats, arm_stats

#: The lr perturbations of the replays (relative): finer than any decision a policy makes.
DEFAULT_EPS = (1e-3, -1e-3)
#: A harm probe this much worse than constant AdamW is "severe" (the harm target's "none worse by
#: more than 20%").
SEVERE_HARM = 1.2


@dataclass
class Resolution:
    """The replays' figures, reported as an arm's are.

    Attributes:
        oracle: regret of the oracle's winning run replayed (``runs`` = instances x eps).
        tuned: the best-constant-lr AdamW replays as harm probes against their reference
            (``harm_rate``, ``worst_harm``; its regret fields are the same ratios); ``None``
            when no instance had a finished constant-AdamW run.
        per_family: ``oracle`` broken down per task family, with that family's harm replays.
        reproduced: instances whose ``eps = 0`` replays matched both references exactly.
        instances: instances replayed.
        mismatches: ``task seed: run`` for each ``eps = 0`` replay that did not reproduce.
        rows: one dict per replay (``task_id``, ``family``, ``seed``, ``reference`` ``oracle``
            or ``tuned``, ``run``, ``eps``, ``reference_loss``, ``loss``, ``ratio``).
    """

    oracle: ArmStats
    tuned: ArmStats | None
    per_family: dict[str, ArmStats]
    reproduced: int
    instances: int
    mismatches: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _spec(task: Any, seed: int, arm: str, lr: float, steps: int, lr_scale: float = 1.0, base: str = "AdamW") -> RunSpec:

    # a task registered at runtime travels with the spec: a fresh worker process cannot look it up
    shipped = task if zoo.split_of(task.id) == "custom" else None
    return RunSpec(task.id, seed, arm, lr, steps, task=shipped, lr_scale=lr_scale, base=base)


def _sweep_results(
    cache: OracleCache, task: Any, seed: int, steps: int, lrs: tuple[float, ...], pool: Any, base: str = "AdamW"
) -> dict[str, Any]:
    """The instance's complete sweep: cached runs, the missing ones trained now (and cached)."""
    missing = [(a, lr) for a, lr in oracle_runs(lrs) if run_id(a, lr) not in cache.runs]
    specs = [_spec(task, seed, a, lr, steps, base=base) for a, lr in missing]
    for (a, lr), result in zip(missing, pool.map(run_one, specs), strict=True):
        cache.add(run_id(a, lr), result)
    return dict(cache.runs)


def _references(results: dict[str, Any], lrs: tuple[float, ...]) -> dict[str, tuple[str, float, float]]:
    """``{"oracle": (arm, lr, loss), "tuned": ("adamw", best lr, loss)}`` of one instance's sweep."""
    oracle, tuned = sweep_winners(results, lrs)
    refs = {"oracle": oracle} if oracle else {}
    return refs | ({"tuned": ("adamw", *tuned)} if tuned else {})


def replay_references(
    tasks: list[Any],
    seeds: list[int],
    eps: tuple[float, ...] = DEFAULT_EPS,
    workers: int = 1,
    budget_scale: float = 1.0,
    oracle_lrs: tuple[float, ...] = ORACLE_LRS,
    base: str = "AdamW",
) -> Resolution:
    """Replay every instance's oracle and tuned-lr references at lr x (1 + eps); see the module.

    Uses (and completes) the oracle cache ``chuck evaluate`` keeps, so the references are the
    ones an evaluation with the same settings divides by. ``base``: the instances' base optimizer
    (:mod:`chuck.evaluation.bases`), whose sweep the references come from; every row names it.
    """
    if not eps or any(e == 0 or not math.isfinite(e) or abs(e) >= 0.5 for e in eps):
        raise ValueError(f"eps must be non-zero relative perturbations below 0.5, got {eps!r}")
    rows: list[dict[str, Any]] = []
    mismatches: list[str] = []
    reproduced = instances = 0
    pool = (
        InlineExecutor() if workers <= 1 else ProcessPoolExecutor(workers, mp_context=worker_context(), initializer=init_worker)
    )
    with pool:
        jobs: list[tuple[dict[str, Any], RunSpec]] = []
        for task in tasks:
            for seed in seeds:
                steps = steps_for(task, budget_scale)
                cache = OracleCache(instance_key(task, seed, budget_scale, steps, instance_config(task, seed, base)))
                refs = _references(_sweep_results(cache, task, seed, steps, oracle_lrs, pool, base), oracle_lrs)
                instances += 1
                for name, (arm, lr, loss) in refs.items():
                    for e in (0.0, *eps):
                        meta = {"task_id": task.id, "family": task.family, "seed": seed, "base": base, "reference": name}
                        meta |= {"run": run_id(arm, lr), "eps": e, "reference_loss": loss}
                        jobs.append((meta, _spec(task, seed, arm, lr, steps, lr_scale=1.0 + e, base=base)))
        results = pool.map(run_one, [spec for _, spec in jobs])
        by_instance: dict[tuple[str, int], bool] = {}
        for (meta, _), result in zip(jobs, results, strict=True):
            ratio = loss_ratio(result, meta["reference_loss"])
            key = (meta["task_id"], meta["seed"])
            if meta["eps"] == 0.0:
                same = effective_loss(result) == meta["reference_loss"]
                by_instance[key] = by_instance.get(key, True) and same
                if not same:
                    where = f"{key[0]} seed {key[1]}" + ("" if base == "AdamW" else f" ({base})")
                    mismatches.append(f"{where}: {meta['run']} ({meta['reference']}) gave ratio {ratio!r}")
                continue
            rows.append(
                meta
                | {
                    "loss": effective_loss(result),
                    "ratio": ratio,
                    "diverged": bool(result.get("diverged")),
                    "error": result.get("error", ""),
                }
            )
        reproduced = sum(by_instance.values())
    return _resolution(rows, reproduced, instances, mismatches)


def combine_resolutions(parts: list[Resolution]) -> Resolution:
    """The replays of several :func:`replay_references` calls (one per base optimizer) as one: their
    rows pooled and summarized again, their counts added."""
    rows = [r for p in parts for r in p.rows]
    mismatches = [m for p in parts for m in p.mismatches]
    return _resolution(rows, sum(p.reproduced for p in parts), sum(p.instances for p in parts), mismatches)


def _resolution(rows: list[dict[str, Any]], reproduced: int, instances: int, mismatches: list[str]) -> Resolution:
    """The replays' statistics (:class:`Resolution`) from their rows."""

    def as_main(rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r | {"regret": r["ratio"]} for r in rs]

    def as_probes(rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r | {"harm": r["ratio"]} for r in rs]

    oracle_rows = [r for r in rows if r["reference"] == "oracle"]
    tuned_rows = [r for r in rows if r["reference"] == "tuned"]
    if not oracle_rows:
        raise ValueError("no instance has a finished oracle sweep to replay")
    per_family = {
        fam: arm_stats(
            as_main([r for r in oracle_rows if r["family"] == fam]),
            as_probes([r for r in tuned_rows if r["family"] == fam]),
        )
        for fam in sorted({r["family"] for r in oracle_rows})
    }
    return Resolution(
        oracle=arm_stats(as_main(oracle_rows), None),
        tuned=arm_stats(as_main(tuned_rows), as_probes(tuned_rows)) if tuned_rows else None,
        per_family=per_family,
        reproduced=reproduced,
        instances=instances,
        mismatches=mismatches,
        rows=rows,
    )


def harm_against_aa(replays: list[dict[str, Any]], probes: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per arm, its harm at the tuned lr next to the A/A's, over the instances that were replayed.

    Args:
        replays: :attr:`Resolution.rows` (only the ``tuned`` ones are read).
        probes: harm probes (``arm``, ``task_id``, ``seed``, ``harm``; ``base``, AdamW when absent,
            pairs a probe with the replays of its own base), e.g. ``kind == "harm_probe"``
            rows of ``rows.csv``; probes of instances without replays are left out.

    Returns:
        ``{arm: {"probes", "harm_rate", "severe_rate", "beyond_aa", "worst"}}``: the shares above
        1.05 and 1.2, and the share *beyond the A/A*: above 1.05 and above every replay of its
        instance (a probe inside its instance's A/A spread is no evidence of harm); plus
        ``"A/A"``, the replays' own ``harm_rate`` and ``severe_rate``.
    """
    spread: dict[tuple[str, int, str], float] = {}
    aa: list[float] = []
    for r in replays:
        if r["reference"] == "tuned":
            key = (str(r["task_id"]), int(r["seed"]), str(r.get("base") or "AdamW"))
            spread[key] = max(spread.get(key, -math.inf), float(r["ratio"]))
            aa.append(float(r["ratio"]))
    out: dict[str, dict[str, float]] = {}
    if aa:
        out["A/A"] = {
            "probes": len(aa),
            "harm_rate": sum(x > HARM_THRESHOLD for x in aa) / len(aa),
            "severe_rate": sum(x > SEVERE_HARM for x in aa) / len(aa),
        }
    by_arm: dict[str, list[tuple[float, float]]] = {}
    for p in probes:
        key = (str(p["task_id"]), int(p["seed"]), str(p.get("base") or "AdamW"))
        if key in spread and p.get("harm") is not None:
            by_arm.setdefault(str(p["arm"]), []).append((float(p["harm"]), spread[key]))
    for arm, pairs in by_arm.items():
        n = len(pairs)
        out[arm] = {
            "probes": n,
            "harm_rate": sum(h > HARM_THRESHOLD for h, _ in pairs) / n,
            "severe_rate": sum(h > SEVERE_HARM for h, _ in pairs) / n,
            "beyond_aa": sum(h > HARM_THRESHOLD and h > top for h, top in pairs) / n,
            "worst": max(h for h, _ in pairs),
        }
    return out


def plot_replays(replays: list[dict[str, Any]], path: Any, title: str = "") -> Any:
    """Each replay's ratio to its reference (log scale), per family: the oracle winner's and the
    tuned-lr AdamW run's, with the 5% band. Families whose points leave the band are where the
    benchmark cannot resolve a policy. ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    families = sorted({str(r["family"]) for r in replays})
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(families) + 1.6))
    for k, (ref, color, dy) in enumerate((("oracle", "tab:blue", -0.12), ("tuned", "tab:orange", 0.12))):
        pts = [(families.index(str(r["family"])) + dy, float(r["ratio"])) for r in replays if r["reference"] == ref]
        label = "oracle winner replayed" if ref == "oracle" else "tuned-lr AdamW replayed"
        if pts:
            ax.scatter([max(x, 1e-3) for _, x in pts], [y for y, _ in pts], s=14, color=color, label=label, zorder=3 + k)
    ax.axvspan(1 / HARM_THRESHOLD, HARM_THRESHOLD, color="0.9", zorder=1, label="within 5%")
    ax.axvline(1.0, color="gray", lw=0.8)
    ax.set_xscale("log")
    ax.set_yticks(range(len(families)), families, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("replay's final loss / its reference (lr x 1.001 and x 0.999)")
    ax.set_title(title or "what the benchmark resolves: the references trained again", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
