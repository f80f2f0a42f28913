"""From rows to the summary: regret and harm per arm, per starting lr and per family; the plot.

* ``median_regret``, ``geo_regret`` (geometric mean): over the arm's main runs, with 95%
  percentile-bootstrap intervals over runs (1000 resamples, fixed seed, so reruns agree).
* ``within_10pct``: share of main runs with regret <= 1.1.
* ``harm_rate``: share of the arm's harm probes (runs at the instance's best constant lr)
  whose final loss is more than 5% above constant AdamW's there; ``worst_harm`` the largest
  ratio. Harm is not broken down per starting lr (the probes all start at the best lr).

Diverged and crashed runs count with regret (and harm) 100: they are in every statistic.

The worst case is a figure of its own, since a user meets the worst run first:

* ``worst_regret``: the largest regret of the arm (overall and per family);
* ``catastrophes``: runs ending at ``CATASTROPHE`` (5x) the sweep's best or worse where Prodigy, on
  the same instance, ends within ``PEER_FINE`` (2x): a failure a careful lr-free peer avoids.
  ``None`` when the rows hold no Prodigy run of the instances.

An evaluation on several base optimizers (:mod:`chuck.evaluation.bases`) pools them in its
headline figures (``Summary.arms``; an instance is a task, seed *and* base, so Prodigy's run on
an SGD instance is judged against that instance's oracle) and repeats every figure per base
(``Summary.by_base``). Pooled, ``per_lr`` groups runs by their starting lr as given, so where the
bases' grids differ (:mod:`chuck.evaluation.bases`) an lr's figure covers the bases that start there.

Every summary also holds the *hindsight* rows (:mod:`chuck.evaluation.hindsight`): what a user
who picked the best lr of the sweep's grid after the fact reaches, and one who missed it by one
grid step, read off the oracle sweep without another run (``Summary.hindsight``).

With the A/A control (``evaluate(aa_control=True)``, :mod:`chuck.evaluation.resolution`) the
summary also says what the benchmark resolves (``Summary.aa_control``) and, per arm,
``harm_beyond_aa``: the share of its harm probes above 1.05 *and* above every A/A replay of
their instance.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
WITHIN = 1.10
HARM_THRESHOLD = 1.05
CATASTROPHE = 5.0
PEER_FINE = 2.0
#: The lr-free peer a catastrophe is judged against.
CATASTROPHE_PEER = "prodigy"


@dataclass
class ArmStats:
    """Regret (and harm) statistics of one arm over a set of runs."""

    runs: int
    median_regret: float
    median_regret_ci: tuple[float, float]
    geo_regret: float
    geo_regret_ci: tuple[float, float]
    within_10pct: float
    diverged: int
    errors: int
    harm_runs: int | None = None
    harm_rate: float | None = None
    worst_harm: float | None = None
    worst_regret: float | None = None
    catastrophes: int | None = None


@dataclass
class ArmSummary(ArmStats):
    """An arm's statistics overall, and broken down per starting lr and per task family."""

    per_lr: dict[str, ArmStats] = field(default_factory=dict)
    per_family: dict[str, ArmStats] = field(default_factory=dict)
    harm_beyond_aa: float | None = None


def mode_suffix(observe: bool) -> str:
    """The file-name suffix of an evaluation's setting: ``""`` with ``observe``, ``"_no_observe"``
    without, so that the two settings of one output directory keep their own summaries and plots
    (``rows.csv`` holds both: the arms of the second end in ``/no-observe``)."""
    return "" if observe else "_no_observe"


def summary_paths(out: Path, observe: bool) -> tuple[Path, Path]:
    """Where the summary of one setting is written in ``out``: ``(summary*.json, summary*.md)``."""
    stem = f"summary{mode_suffix(observe)}"
    return out / f"{stem}.json", out / f"{stem}.md"


@dataclass
class Summary:
    """What :func:`chuck.evaluation.evaluate` measured.

    Attributes:
        arms: per arm (policies first, then baselines), its :class:`ArmSummary`.
        settings: the evaluation's inputs (tasks, lrs, seeds, budget scale, oracle sweep...).
        out: the output directory (``rows.csv``, the summary files of :func:`summary_paths`, the plot).
        plot: the regret-by-starting-lr PNG, ``None`` without matplotlib.
        rows: rows summarized (main runs and harm probes).
        executed: runs executed by this call (oracle sweep included); the rest came from
            ``rows.csv`` or the oracle cache.
        oracle_executed: of ``executed``, the oracle sweep's runs.
        mlflow_run_id: the MLflow parent run, ``None`` when not logged.
        warnings: instances whose oracle or harm probe could not be computed.
        hindsight: per hindsight row (:mod:`chuck.evaluation.hindsight`: the sweep's tuned cosine and
            tuned constant runs, and cosine one grid lr off), its statistics as an :class:`ArmStats`
            dict; empty when no instance's sweep finished.
        aa_control: with the A/A control, its figures: ``oracle`` and ``tuned`` (the replays'
            statistics as an :class:`ArmStats` dict), ``harm`` (the replays' shares above 1.05 and
            1.2), ``eps``, ``instances``, ``reproduced`` (instances whose exact replays matched
            their references), ``plot`` (the replays per family) and ``by_base`` (per base
            optimizer: its ``oracle``, ``harm``, ``instances`` and ``reproduced``); ``None`` without it.
        by_base: per base optimizer of the evaluation (``settings["base_optimizers"]``), its arms'
            :class:`ArmSummary` over that base's instances alone (``harm_beyond_aa`` against that
            base's replays); ``arms`` pools every base.
    """

    arms: dict[str, ArmSummary]
    settings: dict[str, Any]
    out: str
    plot: str | None = None
    rows: int = 0
    executed: int = 0
    oracle_executed: int = 0
    mlflow_run_id: str | None = None
    warnings: list[str] = field(default_factory=list)
    hindsight: dict[str, dict[str, Any]] = field(default_factory=dict)
    aa_control: dict[str, Any] | None = None
    by_base: dict[str, dict[str, ArmSummary]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=True)

    def to_markdown(self) -> str:
        """The headline table (one line per arm), its breakdowns, and with several base optimizers a
        table per base."""
        lines = _arms_table(self.arms)
        families = sorted({f for s in self.arms.values() for f in s.per_family})
        if families:
            lines += [
                "",
                f"Worst regret by family (catastrophes: >= {CATASTROPHE:g}x the sweep's best where "
                f"{CATASTROPHE_PEER} ends within {PEER_FINE:g}x):",
                "",
                "| arm | " + " | ".join(families) + " |",
                "|---|" + "---|" * len(families),
            ]
            for arm, s in self.arms.items():
                cells = []
                for f in families:
                    st = s.per_family.get(f)
                    cat = "" if st is None or not st.catastrophes else f" ({st.catastrophes}!)"
                    cells.append(_num(st.worst_regret if st else None) + cat)
                lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lrs = sorted({lr for s in self.arms.values() for lr in s.per_lr}, key=float)
        if lrs:
            lines += [
                "",
                "Geometric-mean regret by starting lr:",
                "",
                "| arm | " + " | ".join(f"{float(lr):g}" for lr in lrs) + " |",
                "|---|" + "---|" * len(lrs),
            ]
            for arm, s in self.arms.items():
                lines.append(
                    f"| {arm} | " + " | ".join(_num(s.per_lr[lr].geo_regret if lr in s.per_lr else None) for lr in lrs) + " |"
                )
        if len(self.by_base) > 1:
            lines += self._by_base_markdown()
        if self.hindsight:
            lines += self._hindsight_markdown()
        if self.aa_control:
            lines += self._aa_markdown(self.aa_control)
        return "\n".join(lines) + "\n"

    def _by_base_markdown(self) -> list[str]:
        grids = self.settings.get("grids", {})
        lines = [
            "",
            "Per base optimizer (the arms adamw, cosine, plateau and chuck train it; the oracle is a sweep of it; "
            "the lr-free and schedule-free baselines bring their own optimizer):",
        ]
        for base, arms in self.by_base.items():
            grid = grids.get(base, {})
            lrs = ", ".join(f"{float(x):g}" for x in grid.get("lrs", []))
            oracle = grid.get("oracle_lrs", [])
            sweep = f"; oracle sweep {float(min(oracle)):g}..{float(max(oracle)):g}" if oracle else ""
            lines += ["", f"**{base}** (starting lrs {lrs or '-'}{sweep}):", ""]
            lines += _arms_table(arms, beyond_aa=self.aa_control is not None)
        return lines

    def _hindsight_markdown(self) -> list[str]:
        lines = [
            "",
            "Hindsight (read off the oracle sweep, no extra run): the best lr of the sweep's grid picked after the "
            "fact, and cosine one grid step (half a decade on the default grid) from it.",
            "",
            "| hindsight row | runs | median regret [95% CI] | geo regret [95% CI] | within 10% |",
            "|---|---|---|---|---|",
        ]
        for name, h in self.hindsight.items():
            (mlo, mhi), (glo, ghi) = h["median_regret_ci"], h["geo_regret_ci"]
            lines.append(
                f"| {name} | {h['runs']} | {h['median_regret']:.3f} [{mlo:.3f}, {mhi:.3f}] "
                f"| {h['geo_regret']:.3f} [{glo:.3f}, {ghi:.3f}] | {h['within_10pct']:.0%} |"
            )
        return lines

    def _aa_markdown(self, aa: dict[str, Any]) -> list[str]:
        eps = ", ".join(f"{e:+g}" for e in aa["eps"])
        oracle, harm = aa["oracle"], aa["harm"]
        lines = [
            "",
            f"A/A control (each instance's references trained again with the lr x (1 + eps), eps {eps}): "
            "what this benchmark resolves.",
            "",
            f"* the oracle's winning run replayed: median regret {oracle['median_regret']:.3f}, geo regret "
            f"{oracle['geo_regret']:.3f}, within 10% {oracle['within_10pct']:.0%} ({oracle['runs']} replays);",
            f"* constant AdamW at the tuned lr replayed: harm > 1.05 in {_pct(harm.get('harm_rate'))}, > 1.2 in "
            f"{_pct(harm.get('severe_rate'))} ({harm.get('probes', 0):.0f} replays);",
            f"* replays at the exact lr reproduced {aa['reproduced']} of {aa['instances']} instances.",
            "",
            "| arm | harm rate | harm beyond the A/A |",
            "|---|---|---|",
        ]
        lines += [f"| {arm} | {_pct(s.harm_rate)} | {_pct(s.harm_beyond_aa)} |" for arm, s in self.arms.items()]
        return lines


def _arms_table(arms: dict[str, ArmSummary], beyond_aa: bool = False) -> list[str]:
    """One line per arm: runs, regret with intervals, within 10%, the worst case, harm, failures
    (and the harm beyond the A/A with ``beyond_aa``)."""
    extra = " harm beyond the A/A |" if beyond_aa else ""
    lines = [
        "| arm | runs | median regret [95% CI] | geo regret [95% CI] | within 10% | worst regret "
        f"| catastrophes | harm rate | worst harm |{extra} diverged | crashed |",
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if beyond_aa else ""),
    ]
    for arm, s in arms.items():
        cell = f" {_pct(s.harm_beyond_aa)} |" if beyond_aa else ""
        lines.append(
            f"| {arm} | {s.runs} | {s.median_regret:.3f} [{s.median_regret_ci[0]:.3f}, {s.median_regret_ci[1]:.3f}] "
            f"| {s.geo_regret:.3f} [{s.geo_regret_ci[0]:.3f}, {s.geo_regret_ci[1]:.3f}] | {s.within_10pct:.0%} "
            f"| {_num(s.worst_regret)} | {'-' if s.catastrophes is None else s.catastrophes} "
            f"| {_pct(s.harm_rate)} | {_num(s.worst_harm)} |{cell} {s.diverged} | {s.errors} |"
        )
    return lines


def write_summary(summary: Summary, out: Path) -> None:
    """``summary.json`` and ``summary.md`` in ``out`` (``summary_no_observe.*`` without ``observe``)."""
    json_path, md_path = summary_paths(out, summary.settings.get("observe", True))
    json_path.write_text(summary.to_json() + "\n")
    md_path.write_text(summary.to_markdown())


def stats_line(name: str, s: ArmStats, width: int = 34) -> str:
    """One line of an arm's figures for a terminal: runs, median and geo-mean with intervals, within 10%
    (and the harm rate and worst harm when it has harm probes)."""
    harm = "" if s.harm_rate is None else f"  harm > 1.05 {s.harm_rate:.0%}, worst {s.worst_harm:.3g}"
    if s.worst_regret is not None:
        harm += f"  worst regret {s.worst_regret:.3g}"
    if s.catastrophes is not None:
        harm += f"  catastrophes {s.catastrophes}"
    (mlo, mhi), (glo, ghi) = s.median_regret_ci, s.geo_regret_ci
    return (
        f"{name:{width}s} {s.runs:4d} runs  median {s.median_regret:.3f} [{mlo:.3f}, {mhi:.3f}]"
        f"  geo {s.geo_regret:.3f} [{glo:.3f}, {ghi:.3f}]  within 10% {s.within_10pct:4.0%}{harm}"
    )


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def _num(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.3f}"


def geomean(x: np.ndarray, axis: int | None = None) -> Any:
    return np.exp(np.mean(np.log(np.maximum(x, 1e-12)), axis=axis))


def bootstrap_ci(x: np.ndarray, stat: Any, point: float) -> tuple[float, float]:
    """95% percentile-bootstrap interval of ``stat`` over ``x`` (resampled in chunks).

    The interval is widened to contain ``point`` in the rare small-sample case where the
    percentiles miss it, so that ``lo <= point <= hi`` always holds.
    """
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    n, samples = len(x), []
    chunk = max(1, min(BOOTSTRAP_RESAMPLES, 2_000_000 // max(n, 1)))
    done = 0
    while done < BOOTSTRAP_RESAMPLES:
        k = min(chunk, BOOTSTRAP_RESAMPLES - done)
        samples.append(stat(x[rng.integers(0, n, size=(k, n))], axis=1))
        done += k
    lo, hi = np.percentile(np.concatenate(samples), [2.5, 97.5])
    return float(min(lo, point)), float(max(hi, point))


def arm_stats(main: list[dict[str, Any]], probes: list[dict[str, Any]] | None) -> ArmStats:
    """Statistics of one arm over its main runs (and harm probes, when given)."""
    reg = np.array([float(r["regret"]) for r in main], dtype=np.float64)
    med, geo = float(np.median(reg)), float(geomean(reg))
    stats = ArmStats(
        runs=len(reg),
        median_regret=med,
        median_regret_ci=bootstrap_ci(reg, np.median, med),
        geo_regret=geo,
        geo_regret_ci=bootstrap_ci(reg, geomean, geo),
        within_10pct=float(np.mean(reg <= WITHIN)),
        diverged=sum(bool(r["diverged"]) for r in main),
        errors=sum(bool(r["error"]) for r in main),
        worst_regret=float(np.max(reg)) if len(reg) else None,
    )
    if probes is not None:
        harm = np.array([float(r["harm"]) for r in probes], dtype=np.float64)
        stats.harm_runs = len(harm)
        if len(harm):
            stats.harm_rate = float(np.mean(harm > HARM_THRESHOLD))
            stats.worst_harm = float(np.max(harm))
    return stats


def instance_of(row: dict[str, Any]) -> tuple[str, int, str]:
    """The instance a row belongs to: ``(task_id, seed, base)`` (rows without ``base`` are AdamW's)."""
    return str(row["task_id"]), int(row["seed"]), str(row.get("base") or "AdamW")


def catastrophes(main: list[dict[str, Any]], peer: dict[tuple[str, int, str], float]) -> int | None:
    """Runs at ``CATASTROPHE`` x the sweep's best or worse where the peer's run of the same instance
    (``peer[instance_of(row)]``, its regret) ends within ``PEER_FINE``; ``None`` without any peer run."""
    judged = [r for r in main if instance_of(r) in peer]
    if not judged:
        return None
    return sum(float(r["regret"]) >= CATASTROPHE and peer[instance_of(r)] <= PEER_FINE for r in judged)


def summarize_arms(rows: list[dict[str, Any]], arms: list[str]) -> dict[str, ArmSummary]:
    """Per-arm summaries from finished rows (``kind`` main or harm_probe)."""
    out: dict[str, ArmSummary] = {}
    peer = {instance_of(r): float(r["regret"]) for r in rows if r["arm"] == CATASTROPHE_PEER and r["kind"] == "main"}
    for arm in arms:
        main = [r for r in rows if r["arm"] == arm and r["kind"] == "main"]
        if not main:
            continue
        probes = [r for r in rows if r["arm"] == arm and r["kind"] == "harm_probe"]
        s = ArmSummary(**asdict(arm_stats(main, probes)))
        s.catastrophes = catastrophes(main, peer)
        for lr in sorted({float(r["lr"]) for r in main}):
            s.per_lr[repr(lr)] = arm_stats([r for r in main if float(r["lr"]) == lr], None)
        for fam in sorted({r["family"] for r in main}):
            fam_main = [r for r in main if r["family"] == fam]
            s.per_family[fam] = arm_stats(fam_main, [r for r in probes if r["family"] == fam])
            s.per_family[fam].catastrophes = catastrophes(fam_main, peer)
        out[arm] = s
    return out


def plot_regret_by_lr(
    arms: dict[str, ArmSummary], path: Path, title: str, hindsight: dict[str, dict[str, Any]] | None = None
) -> Path | None:
    """Geometric-mean regret (log y) by starting lr (log x), one line per arm; ``None`` without matplotlib.

    ``hindsight`` rows (:class:`Summary` ``.hindsight``) do not depend on the starting lr: each is a
    dotted horizontal line at its geo-mean regret.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for arm, s in arms.items():
        lrs = sorted(s.per_lr, key=float)
        ax.plot(
            [float(lr) for lr in lrs],
            [s.per_lr[lr].geo_regret for lr in lrs],
            marker="o",
            label=arm,
            lw=2.5 if arm.startswith("chuck:") else 1.2,
        )
    styles = (":", "-.", (0, (5, 4)))
    for k, (name, h) in enumerate((hindsight or {}).items()):
        ax.axhline(h["geo_regret"], color="dimgray", lw=1.0, ls=styles[k % len(styles)], label=f"hindsight: {name}")
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import LogLocator, ScalarFormatter

    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.2, 1.5, 2.0, 3.0, 5.0, 7.0)))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=()))
    ax.set_xlabel("starting learning rate")
    ax.set_ylabel("geo-mean regret (final / oracle sweep)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
