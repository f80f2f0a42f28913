"""The decision timeline: loss curves above, hyperparameters below, every decision marked.

One picture of a run under chuck, in two forms built from the same data:

* :func:`plot_png` (matplotlib): panels for the loss (training and validation), the
  effective lr, weight decay, gradient clipping (the threshold, with "off" drawn as such)
  and dropout; every decision is a line coloured by its source (policy, fallback,
  guardrail, external), with a legend; the largest changes are numbered above the panels
  and told in full (what changed, why) in numbered notes below them, so that no note
  covers a curve, the legend or another note. A baseline run (the demo's plain AdamW) can
  be drawn in grey in every panel.
* :func:`write_html`: the same panels as inline SVG in one self-contained page (no
  network, no external script), where hovering or clicking a marker shows the decision's
  step, source, what changed and why, the sources can be toggled, and the decision table
  (step, source, what changed, why, hyperparameters) follows below. MLflow shows it inside
  its artifact viewer.

The MLflow logger writes both as ``chuck/timeline.png`` and ``chuck/timeline.html`` at the
end of a run; the demo draws its PNG with :func:`plot_png`.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chuck.core.explain import decision_changes, why_without_change

#: Marker colour of each decision source (colour-blind-safe tableau colours).
SOURCE_COLORS = {"policy": "#1f77b4", "fallback": "#ff7f0e", "guardrail": "#d62728", "external": "#7f7f7f"}
SOURCE_MEANING = {
    "policy": "the policy decided",
    "fallback": "the heuristic decided, or chuck held (observation outside the policy's training range, or the policy failed)",
    "guardrail": "a guardrail skipped or rolled back a step and halved the lr",
    "external": "an action from outside (the meta-environment)",
}
BASELINE_COLOR = "#8c8c8c"
#: Largest changes annotated with their reason in the PNG.
ANNOTATE = 4


@dataclass
class Series:
    """A metric over steps."""

    steps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def finite(self) -> Series:
        keep = [(s, v) for s, v in zip(self.steps, self.values) if v is not None and math.isfinite(v)]
        return Series([s for s, _ in keep], [v for _, v in keep])


@dataclass
class Timeline:
    """What the timeline shows.

    Attributes:
        title: the figure's title.
        decisions: decision rows (``Decision.as_dict()`` or the MLflow table's rows): step, source,
            hyperparameters, reason, attribution, observation.
        initial: the hyperparameters before the first decision.
        train_loss, val_loss: the loss curves.
        baseline: optional comparison run: ``{"name": str, "train_loss": Series, "val_loss": Series,
            "lr": Series, "weight_decay": Series}`` (missing series are left out).
        last_step: where the run ended (the hyperparameter steps extend to it).
    """

    title: str
    decisions: Sequence[Mapping[str, Any]]
    initial: Mapping[str, float]
    train_loss: Series = field(default_factory=Series)
    val_loss: Series = field(default_factory=Series)
    baseline: Mapping[str, Any] | None = None
    last_step: float | None = None

    # -- derived ------------------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        """One row per decision: step, source, what changed, why, hyperparameters after it."""
        out = []
        for d, changes in decision_changes(self.decisions, self.initial):
            hp = d.get("hyperparameters") or {}
            why = why_without_change(d.get("reason") or "", changes)
            out.append(
                {
                    "step": d.get("step"),
                    "source": d.get("source", ""),
                    "changed": "; ".join(changes.values()) or "nothing",
                    "why": why,
                    "lr": hp.get("lr", math.nan),
                    "weight_decay": hp.get("weight_decay", math.nan),
                    "clip": hp.get("clip", math.inf),
                    "dropout": hp.get("dropout", 0.0),
                    "size": _size(changes, d, self.initial),
                }
            )
        return out

    def end(self) -> float:
        candidates = [self.last_step or 0.0, *(self.train_loss.steps[-1:]), *(self.val_loss.steps[-1:])]
        candidates += [float(d.get("step") or 0) for d in self.decisions[-1:]]
        return max(candidates)

    def hp_series(self, key: str) -> Series:
        """A hyperparameter as a step function: its initial value, then its value after each decision."""
        steps, values = [0.0], [float(self.initial.get(key, math.nan))]
        for d in self.decisions:
            steps.append(float(d.get("step") or 0))
            values.append(float((d.get("hyperparameters") or {}).get(key, math.nan)))
        steps.append(self.end())
        values.append(values[-1])
        return Series(steps, values)

    def panels(self) -> list[str]:
        """The hyperparameter panels worth drawing: lr, weight decay and clip always; dropout when there is any."""
        out = ["lr", "weight_decay", "clip"]
        if any((d.get("hyperparameters") or {}).get("dropout", 0.0) for d in self.decisions) or self.initial.get("dropout"):
            out.append("dropout")
        return out


def _size(changes: Mapping[str, str], d: Mapping[str, Any], initial: Mapping[str, float]) -> float:
    """How large a decision's change was, for choosing which to annotate: |log| of the lr factor, plus
    one for switching clipping, plus the other factors' |log|."""
    total = 0.0
    for text in changes.values():
        word = text.split()[1] if len(text.split()) > 1 else ""
        if word[:1] in ("x", "/"):
            with contextlib.suppress(ValueError):
                total += abs(math.log(float(word[1:])))
        elif text.startswith(("clipping on", "clipping off")):
            total += 1.0
        else:
            total += 0.3
    return total


LABELS = {"lr": "learning rate", "weight_decay": "weight decay", "clip": "clip threshold", "dropout": "dropout"}


# -- PNG ---------------------------------------------------------------------------------------
#: Layout of the PNG, in inches: the figure's width, the margins around the panels, the loss panel's
#: and each hyperparameter panel's height, the gap between panels.
FIG_WIDTH, LEFT, RIGHT = 12.0, 1.0, 0.3
LOSS_HEIGHT, PANEL_HEIGHT, PANEL_GAP = 2.2, 1.05, 0.22
#: Above the panels: the title, then the strip of numbered markers for the annotated decisions.
TITLE_SPACE, MARKER_STRIP = 0.42, 0.32
#: Below the last panel: its step axis, the legend of decision sources, then the numbered notes.
AXIS_SPACE, LEGEND_SPACE, BOTTOM = 0.55, 0.32, 0.15
#: The notes: font size (points), characters a line before it wraps (two columns), gaps (inches).
NOTE_FONT, NOTE_WRAP, NOTE_GAP, COLUMN_GAP = 7.5, 92, 0.1, 0.3
#: Line height of the notes' text in inches (matplotlib's default line spacing is 1.2), and the padding
#: their boxes add above and below (``pad`` 0.35 of the font size each side).
NOTE_LINE, NOTE_PAD = 1.2 * NOTE_FONT / 72, 2 * 0.35 * NOTE_FONT / 72 + 0.04
#: Width a numbered marker takes in the strip (inches): nearer markers are moved apart.
MARKER_WIDTH = 0.26


def prepare() -> None:
    """Import and warm up what :func:`plot_png` needs (matplotlib, its fonts, the Agg canvas), so that a
    later drawing pays only for itself: the MLflow logger calls this from its sender thread while the run
    trains. Changes no global matplotlib state (no backend switch)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    FigureCanvasAgg(fig)
    fig.text(0.5, 0.5, "1 step lr", fontsize=NOTE_FONT, bbox={"boxstyle": "round"})
    fig.savefig(io.BytesIO(), format="png", dpi=20)


def _notes(tl: Timeline, rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], list[str]]]:
    """The decisions to annotate (the largest changes, in step order) and each one's note, wrapped, whole."""
    top = sorted((r for r in rows if r["size"] > 0), key=lambda r: -r["size"])[:ANNOTATE]
    out = []
    for i, r in enumerate(sorted(top, key=lambda r: r["step"]), start=1):
        text = f"{i}. step {r['step']} [{r['source']}] {r['changed']}" + (f": {r['why']}" if r["why"] else "")
        out.append((r, textwrap.wrap(text, NOTE_WRAP, subsequent_indent="    ")))
    return out


def _spread(xs: list[float], width: float, lo: float, hi: float) -> list[float]:
    """Positions for markers wanted at ``xs`` (sorted), at least ``width`` apart, within [lo, hi]."""
    out: list[float] = []
    for x in xs:
        out.append(max(x, lo, out[-1] + width if out else lo))
    over = out[-1] - hi if out else 0.0
    if over > 0:  # pushed past the right edge: move back from the right, keeping the gaps
        for i in range(len(out) - 1, -1, -1):
            out[i] = min(out[i], hi if i == len(out) - 1 else out[i + 1] - width)
    return out


def draw_figure(tl: Timeline) -> Any:
    """The timeline as a matplotlib ``Figure`` (no pyplot, no backend switch); :func:`plot_png` saves it.

    Layout, fixed in inches so that nothing overlaps (no ``tight_layout``): the title; a strip of
    numbered markers, each above its decision's step (moved apart when steps crowd, joined to the step
    by a line); the panels (the loss with its legend inside, then the hyperparameters); the step axis;
    the legend of decision sources; the numbered notes, two columns, each a decision's step, source,
    what changed and why, wrapped and never cut. The figure grows with the notes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    panels = tl.panels()
    rows = tl.rows()
    notes = _notes(tl, rows)
    columns = [notes[: (len(notes) + 1) // 2], notes[(len(notes) + 1) // 2 :]]
    note_heights = [sum(len(lines) * NOTE_LINE + NOTE_PAD + NOTE_GAP for _, lines in col) for col in columns]
    handles = [
        Line2D([0], [0], color=c, lw=2, label=f"{s} decision")
        for s, c in SOURCE_COLORS.items()
        if any(r["source"] == s for r in rows)
    ]
    heights = [LOSS_HEIGHT] + [PANEL_HEIGHT] * len(panels)
    panels_h = sum(heights) + PANEL_GAP * (len(heights) - 1)
    below = AXIS_SPACE + (LEGEND_SPACE if handles else 0.0) + max(note_heights) + BOTTOM
    H = TITLE_SPACE + (MARKER_STRIP if notes else 0.0) + panels_h + below
    fig = Figure(figsize=(FIG_WIDTH, H))
    FigureCanvasAgg(fig)
    top = H - TITLE_SPACE - (MARKER_STRIP if notes else 0.0)  # inches from the bottom
    gs = fig.add_gridspec(
        len(heights),
        1,
        height_ratios=heights,
        left=LEFT / FIG_WIDTH,
        right=1 - RIGHT / FIG_WIDTH,
        top=top / H,
        bottom=(top - panels_h) / H,
        hspace=PANEL_GAP / (panels_h - PANEL_GAP * (len(heights) - 1)) * len(heights),
    )
    axes = [fig.add_subplot(gs[0])]
    axes += [fig.add_subplot(gs[i], sharex=axes[0]) for i in range(1, len(heights))]
    for ax in axes[:-1]:
        ax.tick_params(labelbottom=False)
    fig.suptitle(tl.title, y=1 - 0.12 / H, va="top", fontsize=12)
    x_end = tl.end() or 1.0
    x0, x1 = -0.02 * x_end, 1.02 * x_end
    axes[0].set_xlim(x0, x1)
    base = tl.baseline or {}
    bname = base.get("name", "baseline")

    ax = axes[0]
    tr, va = tl.train_loss.finite(), tl.val_loss.finite()
    if tr.steps:
        ax.plot(tr.steps, tr.values, color=SOURCE_COLORS["policy"], alpha=0.35, lw=0.8, label="training loss")
    if va.steps:
        ax.plot(va.steps, va.values, color=SOURCE_COLORS["policy"], lw=2, marker="o", ms=3, label="validation loss")
    for key, style in (("train_loss", {"alpha": 0.35, "lw": 0.8}), ("val_loss", {"lw": 2})):
        s = base.get(key)
        if s is not None and s.finite().steps:
            f = s.finite()
            ax.plot(f.steps, f.values, color=BASELINE_COLOR, label=f"{bname}: {key.replace('_', ' ')}", **style)
    if any(v > 0 for v in tr.values + va.values):
        _log_axis(ax, [v for v in tr.values + va.values if v > 0])
    ax.set_ylabel("loss")
    if ax.get_lines():
        ax.legend(loc="upper right", fontsize=8, ncol=2)

    for ax, key in zip(axes[1:], panels):
        s = tl.hp_series(key)
        if key == "clip":
            _clip_panel(ax, s)
            b = base.get("clip")
            if b is not None:
                if any(math.isfinite(v) for v in b.values):
                    shown = [v if math.isfinite(v) else math.nan for v in b.values]
                    ax.step(b.steps, shown, where="post", color=BASELINE_COLOR, lw=1.5, label=bname)
                else:
                    ax.text(
                        0.99,
                        0.08,
                        f"{bname}: clipping off throughout",
                        ha="right",
                        transform=ax.transAxes,
                        fontsize=8,
                        color=BASELINE_COLOR,
                    )
        else:
            ax.step(s.steps, s.values, where="post", color=SOURCE_COLORS["policy"], lw=1.5, label="chuck")
            b = base.get(key)
            if b is not None and b.finite().steps:
                ax.step(b.steps, b.values, where="post", color=BASELINE_COLOR, lw=1.5, label=bname)
            vals = [v for v in s.values + (list(b.values) if b is not None else []) if v is not None and math.isfinite(v)]
            if key == "lr" and vals and min(vals) > 0 and max(vals) / min(vals) > 20:
                _log_axis(ax, vals)
            if b is not None:
                ax.legend(loc="upper left", fontsize=8)
        ax.set_ylabel(LABELS[key], fontsize=9)

    # every decision, on every panel, coloured by source: one collection a panel
    if rows:
        import matplotlib.colors as mcolors

        colors = [
            mcolors.to_rgba(SOURCE_COLORS.get(r["source"], "#333"), 0.25 if r["changed"] == "nothing" else 0.6) for r in rows
        ]
        widths = [0.6 if r["changed"] == "nothing" else 1.0 for r in rows]
        steps = [r["step"] for r in rows]
        for ax in axes:
            ax.vlines(steps, 0, 1, transform=ax.get_xaxis_transform(), colors=colors, linewidths=widths, zorder=0)
        lr_ax = axes[1 + panels.index("lr")]
        dots = [(r["step"], r["lr"], SOURCE_COLORS.get(r["source"], "#333")) for r in rows if math.isfinite(r["lr"])]
        if dots:
            lr_ax.scatter([d[0] for d in dots], [d[1] for d in dots], s=18, c=[d[2] for d in dots], zorder=3)
    axes[-1].set_xlabel("step")

    # the numbered markers above the loss panel, and the notes they number below everything
    plot_w = FIG_WIDTH - LEFT - RIGHT

    def x_inch(step: float) -> float:
        return LEFT + plot_w * (float(step) - x0) / (x1 - x0)

    wanted = [x_inch(r["step"]) for r, _ in notes]
    placed = _spread(wanted, MARKER_WIDTH, LEFT, FIG_WIDTH - RIGHT)
    y_axes_top, y_marker = top, top + MARKER_STRIP / 2
    markers, texts = [], []
    for i, ((r, _), want, at) in enumerate(zip(notes, wanted, placed), start=1):
        color = SOURCE_COLORS.get(r["source"], "#333")
        fig.add_artist(Line2D([want / FIG_WIDTH, at / FIG_WIDTH], [y_axes_top / H, (y_marker - 0.08) / H], color=color, lw=0.8))
        markers.append(
            fig.text(
                at / FIG_WIDTH,
                y_marker / H,
                str(i),
                ha="center",
                va="center",
                fontsize=8,
                fontweight="bold",
                color=color,
                bbox={"boxstyle": "circle,pad=0.25", "fc": "white", "ec": color, "lw": 1.2},
            )
        )
    y_legend = top - panels_h - AXIS_SPACE
    if handles:
        fig.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, y_legend / H),
            ncol=len(handles),
            fontsize=8,
            frameon=False,
        )
    y_notes = y_legend - (LEGEND_SPACE if handles else 0.0)
    col_w = (plot_w - COLUMN_GAP) / 2
    for c, col in enumerate(columns):
        y = y_notes
        for r, lines in col:
            texts.append(
                fig.text(
                    (LEFT + c * (col_w + COLUMN_GAP)) / FIG_WIDTH,
                    (y - NOTE_PAD / 2) / H,
                    "\n".join(lines),
                    ha="left",
                    va="top",
                    fontsize=NOTE_FONT,
                    bbox={"boxstyle": "round,pad=0.35", "fc": "white", "ec": SOURCE_COLORS.get(r["source"], "#333")},
                )
            )
            y -= len(lines) * NOTE_LINE + NOTE_PAD + NOTE_GAP
    fig.chuck_markers, fig.chuck_notes = markers, texts  # type: ignore[attr-defined]  # for the layout test
    return fig


def _log_axis(ax: Any, values: Sequence[float]) -> None:
    """A log y axis with a few short labels ("2.3", not "2.3 x 10^0": they must fit the margin) and no
    minor ticks (matplotlib makes each tick an object: a log axis's minor ticks were most of a drawing)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

    ax.set_yscale("log")
    lo, hi = min(values), max(values)
    nice = [m * 10.0**e for e in range(math.floor(math.log10(lo)), math.floor(math.log10(hi)) + 1) for m in (1, 2, 5)]
    if hi / lo > 100:  # decades: 1e-05, 0.0001, ...
        locator: Any = LogLocator(base=10, numticks=6)
    elif sum(lo <= t <= hi for t in nice) >= 2:  # 1, 2, 5 times a power of ten
        locator = LogLocator(base=10, subs=(1.0, 2.0, 5.0))
    else:  # a narrow range (a loss from 2.1 to 2.4): evenly spaced
        locator = MaxNLocator(4)
    ax.yaxis.set_major_locator(locator)
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))


def plot_png(tl: Timeline, path: str | Path, dpi: int = 110) -> Path:
    """Draw the timeline (:func:`draw_figure`) into a PNG; returns the path."""
    out = Path(path)
    draw_figure(tl).savefig(out, dpi=dpi)
    return out


def _off_stretches(s: Series) -> list[tuple[float, float]]:
    """The step ranges where a step series is not finite (clipping off), consecutive ones merged."""
    out: list[tuple[float, float]] = []
    for (a, va), b in zip(zip(s.steps, s.values), s.steps[1:]):
        if math.isfinite(va) or b <= a:
            continue
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _clip_panel(ax: Any, s: Series) -> None:
    finite = [v for v in s.values if math.isfinite(v)]
    top = max(finite) * 2 if finite else 1.0
    shown = [v if math.isfinite(v) else math.nan for v in s.values]
    if finite:
        ax.step(s.steps, shown, where="post", color=SOURCE_COLORS["policy"], lw=1.5)
        _log_axis(ax, finite)
    # off periods: a shaded band labelled "off", one per stretch (not one per decision: a long run
    # holds hundreds, and a band each cost close() most of a second)
    for a, b in _off_stretches(s):
        ax.axvspan(a, b, color="#dddddd", alpha=0.6, lw=0)
    if not finite:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "clipping off throughout", ha="center", va="center", transform=ax.transAxes, fontsize=9)
    elif any(not math.isfinite(v) for v in s.values):
        ax.text(0.01, 0.9, "grey: clipping off", transform=ax.transAxes, fontsize=7, va="top")
        ax.set_ylim(top=top)


# -- HTML --------------------------------------------------------------------------------------
def write_html(tl: Timeline, path: str | Path) -> Path:
    """The interactive page (inline SVG + a little JavaScript, no network); returns the path."""
    rows = tl.rows()
    panels = ["loss", *tl.panels()]
    width, left, right = 1100, 70, 20
    heights = {"loss": 220}
    x_end = max(tl.end(), 1.0)

    def x(step: float) -> float:
        return left + (width - left - right) * (float(step) / x_end)

    svg_parts = []
    y0 = 24
    for panel in panels:
        h = heights.get(panel, 110)
        svg_parts.append(_svg_panel(tl, panel, x, y0, h, width, left, right))
        y0 += h + 28
    total_h = y0
    # decision markers across all panels
    markers = []
    for i, r in enumerate(rows):
        color = SOURCE_COLORS.get(r["source"], "#333")
        tip = html.escape(f"step {r['step']} [{r['source']}] {r['changed']}: {r['why']}".rstrip(": "))
        markers.append(
            f'<line class="dec src-{html.escape(r["source"])}" data-i="{i}" x1="{x(r["step"]):.1f}" x2="{x(r["step"]):.1f}" '
            f'y1="20" y2="{total_h - 20}" stroke="{color}" stroke-opacity="{0.25 if r["changed"] == "nothing" else 0.7}" '
            f'stroke-width="{3 if r["changed"] != "nothing" else 2}"><title>{tip}</title></line>'
        )
    ticks = "".join(
        f'<text x="{x(t):.1f}" y="{total_h - 4}" font-size="10" text-anchor="middle">{_fmt_step(t)}</text>'
        for t in _ticks(0, x_end, 8)
    )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="100%" viewBox="0 0 {width} {total_h}" '
        f'font-family="sans-serif">{"".join(svg_parts)}{"".join(markers)}{ticks}</svg>'
    )
    legend = "".join(
        f'<label title="{html.escape(SOURCE_MEANING[s])}"><input type="checkbox" checked data-src="{s}"> '
        f'<span style="color:{c}">&#9646;</span> {s} ({sum(r["source"] == s for r in rows)})</label> '
        for s, c in SOURCE_COLORS.items()
        if any(r["source"] == s for r in rows)
    )
    table = _html_table(rows)
    data = json.dumps([{k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in r.items()} for r in rows])
    page = _PAGE.format(
        title=html.escape(tl.title),
        legend=legend,
        svg=svg,
        table=table,
        data=data,
        meanings="".join(f"<li><b>{s}</b>: {html.escape(m)}</li>" for s, m in SOURCE_MEANING.items()),
    )
    out = Path(path)
    out.write_text(page, encoding="utf-8")
    return out


def _svg_panel(tl: Timeline, panel: str, x: Any, y0: float, h: float, width: int, left: int, right: int) -> str:
    base = tl.baseline or {}
    series: list[tuple[Series, str, str, bool]] = []  # (series, colour, label, is_step)
    if panel == "loss":
        series += [
            (tl.train_loss.finite(), SOURCE_COLORS["policy"] + "66", "training loss", False),
            (tl.val_loss.finite(), SOURCE_COLORS["policy"], "validation loss", False),
        ]
        for key, alpha in (("train_loss", "66"), ("val_loss", "")):
            if base.get(key) is not None:
                series.append((base[key].finite(), BASELINE_COLOR + alpha, f"{base.get('name', 'baseline')}: {key}", False))
        log = True
    else:
        s = tl.hp_series(panel)
        if panel == "clip":
            s = Series(s.steps, [v if math.isfinite(v) else math.nan for v in s.values])
        series.append((s, SOURCE_COLORS["policy"], "chuck", True))
        if base.get(panel) is not None:
            series.append((base[panel], BASELINE_COLOR, base.get("name", "baseline"), True))
        log = panel in ("lr", "clip")
    vals = [v for s, *_ in series for v in s.values if v is not None and math.isfinite(v) and (v > 0 or not log)]
    parts = [
        f'<text x="{left}" y="{y0 - 4}" font-size="12" font-weight="bold">{html.escape(LABELS.get(panel, panel))}</text>',
        f'<rect x="{left}" y="{y0}" width="{width - left - right}" height="{h}" fill="none" stroke="#ccc"/>',
    ]
    if panel == "clip":
        for a, b in _off_stretches(tl.hp_series("clip")):
            parts.append(
                f'<rect x="{x(a):.1f}" y="{y0}" width="{max(x(b) - x(a), 0.5):.1f}" height="{h}" fill="#e5e5e5">'
                f"<title>clipping off</title></rect>"
            )
        if not vals:
            parts.append(
                f'<text x="{width / 2}" y="{y0 + h / 2}" font-size="12" text-anchor="middle">clipping off throughout</text>'
            )
    if not vals:
        return "".join(parts)
    lo, hi = min(vals), max(vals)
    if log:
        lo, hi = math.log10(lo), math.log10(hi)
    if hi - lo < 1e-12:  # a constant: centre it
        span = 0.5 if log or lo == 0 else abs(lo) * 0.5
        lo, hi = lo - span, hi + span
    pad = 0.06 * (hi - lo)
    lo, hi = lo - pad, hi + pad

    def y(v: float) -> float:
        t = math.log10(v) if log else v
        return y0 + h - h * (t - lo) / (hi - lo)

    for t in _ticks(lo, hi, 4):
        label = f"{10**t:.3g}" if log else f"{t:.3g}"
        parts.append(f'<text x="{left - 4}" y="{y(10**t if log else t) + 3:.1f}" font-size="9" text-anchor="end">{label}</text>')
    for s, color, label, is_step in series:
        pts: list[tuple[float, float] | None] = []
        prev: float | None = None
        for st, v in zip(s.steps, s.values):
            if v is None or not math.isfinite(v) or (log and v <= 0):
                prev = None
                pts.append(None)
                continue
            if is_step and prev is not None:
                pts.append((x(st), prev))
            pts.append((x(st), y(v)))
            prev = y(v)
        for seg in _segments(pts):
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in seg)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.6"><title>{html.escape(label)}</title></polyline>'
            )
    return "".join(parts)


def _segments(pts: Sequence[tuple[float, float] | None]) -> Iterable[list[tuple[float, float]]]:
    seg: list[tuple[float, float]] = []
    for p in pts:
        if p is None:
            if len(seg) > 1:
                yield seg
            seg = []
        else:
            seg.append(p)
    if len(seg) > 1:
        yield seg


def _ticks(lo: float, hi: float, n: int) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    out: list[float] = []
    t = start
    while t <= hi + 1e-9 and len(out) < 50:
        out.append(round(t, 12))
        t += step
    return out


def _fmt_step(t: float) -> str:
    return f"{t / 1000:g}k" if t >= 10_000 else f"{t:g}"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isinf(v):
            return "off"
        return f"{v:.3g}"
    return html.escape(str(v))


def _html_table(rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("step", "source", "what changed", "why", "lr", "weight decay", "clip", "dropout"))
    body = "".join(
        f'<tr id="row{i}" class="src-{html.escape(r["source"])}"><td>{r["step"]}</td>'
        f'<td style="color:{SOURCE_COLORS.get(r["source"], "#333")}">{html.escape(r["source"])}</td>'
        f"<td>{html.escape(r['changed'])}</td><td>{html.escape(r['why'])}</td><td>{_fmt(r['lr'])}</td>"
        f"<td>{_fmt(r['weight_decay'])}</td><td>{_fmt(r['clip'])}</td><td>{_fmt(r['dropout'])}</td></tr>"
        for i, r in enumerate(rows)
    )
    return f'<table id="decisions"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 12px; color: #222; }}
#detail {{ min-height: 3.2em; padding: 6px 10px; border-left: 4px solid #1f77b4; background: #f5f8fb; margin: 6px 0; }}
table {{ border-collapse: collapse; font-size: 12px; margin-top: 10px; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }}
th {{ background: #f0f0f0; position: sticky; top: 0; }}
td:nth-child(4) {{ max-width: 640px; }}
tr.hl {{ background: #fff3c4; }}
line.dec {{ cursor: pointer; }}
.legend label {{ margin-right: 14px; }}
</style></head><body>
<h2>{title}</h2>
<div class="legend">Decisions: {legend} <label><input type="checkbox" id="moved"> only decisions that changed something</label></div>
<div id="detail">Hover or click a decision (a vertical line) to see what changed and why.</div>
{svg}
<details><summary>What the sources mean</summary><ul>{meanings}</ul></details>
<h3>Decision table</h3>
{table}
<script>
const rows = {data};
const detail = document.getElementById('detail');
function show(i, scroll) {{
  const r = rows[i];
  detail.textContent = 'step ' + r.step + ' [' + r.source + '] ' + r.changed + (r.why ? ': ' + r.why : '');
  document.querySelectorAll('tr.hl').forEach(e => e.classList.remove('hl'));
  const tr = document.getElementById('row' + i);
  if (tr) {{ tr.classList.add('hl'); if (scroll) tr.scrollIntoView({{block: 'center'}}); }}
}}
document.querySelectorAll('line.dec').forEach(l => {{
  l.addEventListener('mouseenter', () => show(+l.dataset.i, false));
  l.addEventListener('click', () => show(+l.dataset.i, true));
}});
function filter() {{
  const on = new Set([...document.querySelectorAll('input[data-src]')].filter(c => c.checked).map(c => c.dataset.src));
  const moved = document.getElementById('moved').checked;
  rows.forEach((r, i) => {{
    const visible = on.has(r.source) && (!moved || r.changed !== 'nothing');
    const tr = document.getElementById('row' + i);
    if (tr) tr.style.display = visible ? '' : 'none';
    const l = document.querySelector('line.dec[data-i="' + i + '"]');
    if (l) l.style.display = visible ? '' : 'none';
  }});
}}
document.querySelectorAll('input').forEach(c => c.addEventListener('change', filter));
</script>
</body></html>
"""
