"""The timeline PNG's annotations are legible: no box covers another box or a legend, none is cut off by
the figure's edge, and each tells its decision's reason whole (wrapped, never shortened to "...")."""

from __future__ import annotations

import itertools
import math

from chuck.tracking.timeline import Series, Timeline, draw_figure, plot_png

LONG_WHY = (
    "new gradients point along the last step (cosine +0.35) (usually between -0.05 and +0.12 at a tuned lr) "
    "(prior rule); lr 3e-05 below its usual 1.7e-05..0.69 in training; held back by distance estimate grew 59.3x "
    "since the last decision (+0.08); gradient norm varies 13% around its mean; 52% of activations zero (-0.08)"
)


def _crowded_timeline() -> Timeline:
    """Six large changes, four of them on consecutive steps at the right edge, under the loss legend."""
    decisions, lr = [], 1e-5
    for k, step in enumerate([20, 40, 57, 58, 59, 60]):
        lr *= 3.0 if k % 2 == 0 else 0.5
        decisions.append(
            {
                "step": step,
                "source": "guardrail" if k == 3 else "policy",
                "reason": f"{LONG_WHY} (decision {k})",
                "hyperparameters": {"lr": lr, "weight_decay": 0.01 / (k + 1), "clip": math.inf, "dropout": 0.3 - 0.01 * k},
            }
        )
    steps = [float(s) for s in range(1, 61)]
    return Timeline(
        "cv.digits_mlp: AdamW from lr=1e-05, with and without chuck",
        decisions,
        {"lr": 1e-5, "weight_decay": 0.01, "clip": math.inf, "dropout": 0.3},
        Series(steps, [2.3 - 0.003 * s for s in steps]),
        Series([20.0, 40.0, 60.0], [2.29, 2.28, 2.27]),
        baseline={"name": "AdamW", "train_loss": Series(steps, [2.3] * 60), "lr": Series([0.0, 60.0], [1e-5, 1e-5])},
        last_step=60,
    )


def _boxes(fig):
    """Every text drawn in a box (the annotations), and every legend, as window extents."""
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    boxed = [t for t in fig.findobj(Text) if t.get_visible() and t.get_bbox_patch() is not None and t.get_text()]
    extents = [t.get_bbox_patch().get_window_extent(renderer) for t in boxed]
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
    return boxed, extents, [leg.get_window_extent(renderer) for leg in legends], fig.bbox


def test_annotation_boxes_overlap_neither_each_other_nor_a_legend_nor_the_edge() -> None:
    fig = draw_figure(_crowded_timeline())
    boxed, extents, legends, edge = _boxes(fig)
    assert len(boxed) >= 8, "four numbered markers and their four notes"
    for (i, a), (j, b) in itertools.combinations(enumerate(extents), 2):
        assert not a.overlaps(b), f"{boxed[i].get_text()[:40]!r} overlaps {boxed[j].get_text()[:40]!r}"
    for a, t in zip(extents, boxed):
        assert not any(a.overlaps(leg) for leg in legends), f"{t.get_text()[:40]!r} overlaps a legend"
        assert edge.x0 <= a.x0 and a.x1 <= edge.x1 and edge.y0 <= a.y0 and a.y1 <= edge.y1, f"{t.get_text()[:40]!r} is cut off"


def test_each_note_tells_its_reason_whole() -> None:
    fig = draw_figure(_crowded_timeline())
    notes = [t.get_text() for t in fig.chuck_notes]
    assert len(notes) == 4 and [n.split(".")[0] for n in notes] == ["1", "2", "3", "4"]
    for note in notes:
        assert "..." not in note
        assert " ".join(LONG_WHY.split()) in " ".join(note.split()), "the reason, wrapped but whole"
    assert [m.get_text() for m in fig.chuck_markers] == ["1", "2", "3", "4"]


def test_plot_png_writes_the_figure(tmp_path) -> None:
    out = plot_png(_crowded_timeline(), tmp_path / "t.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
