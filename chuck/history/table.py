"""What ``chuck history`` prints: a table for people, JSON and CSV for machines.

The table used to be polars' own repr: a shape line, a dtype row, about 210
characters wide, ids wrapped over lines and steps printed as ``600.0``.
Here every column has a readable name, counts are integers, numbers are short,
long text is shortened with an ellipsis, and the whole table fits ``width``
columns (100 by default): the label and policy columns give way first, then the
least needed columns are dropped (:func:`format_table`). JSON and CSV carry every recorded field, plus the
run's ``outcome`` and the reason for it (:func:`chuck.history.outcomes.classify_run`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chuck.history.outcomes import classify_run, recorded_number

#: The table's default width: fits a 100-column terminal (and most code review panes).
DEFAULT_WIDTH = 100
GAP = "  "
ELLIPSIS = "…"


@dataclass(frozen=True)
class Column:
    """One table column: its header, how a row becomes its cell, and how it gives way to a narrow width.

    ``flexible``: free text (labels, ids) that is shortened with an ellipsis to fit. ``drop``: the
    order in which columns are dropped when shortening is not enough (lower goes first; ``None``:
    never dropped). ``middle``: shorten in the middle (ids whose end, a version, matters).
    """

    header: str
    cell: Callable[[dict[str, Any]], str]
    right: bool = False
    flexible: bool = False
    drop: int | None = None
    middle: bool = False


#: Free-text columns are not shortened below this before a column is dropped instead...
COMFORTABLE = 12
#: ...nor below this when every droppable column is gone.
NARROWEST = 4


def _fmt(v: Any, spec: str) -> str:
    n = recorded_number(v)
    return "-" if n is None else format(n, spec)


def _count(v: Any) -> str:
    n = recorded_number(v)
    return "-" if n is None or math.isinf(n) else str(int(round(n)))


def _params(v: Any) -> str:
    n = recorded_number(v)
    if n is None:
        return "-"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(int(n))


def _when(v: Any) -> str:
    n = recorded_number(v)
    return "-" if n is None else time.strftime("%m-%d %H:%M", time.localtime(n))


def _final_loss(row: dict[str, Any]) -> str:
    loss = classify_run(row).final_loss
    return "-" if loss is None else f"{loss:.4g}"


def _start_lr(row: dict[str, Any]) -> Any:
    """The lr the run started from (``lr_start``; ``initial_lr`` in records written before it existed)."""
    v = row.get("lr_start")
    return row.get("initial_lr") if recorded_number(v) is None else v


COLUMNS: tuple[Column, ...] = (
    Column("when", lambda r: _when(r.get("created")), drop=3),
    Column("label", lambda r: str(r.get("label") or "-"), flexible=True),
    Column("policy", lambda r: str(r.get("policy_id") or "-"), flexible=True, middle=True),
    Column("params", lambda r: _params(r.get("fp_param_count")), right=True, drop=4),
    Column("optim", lambda r: str(r.get("fp_optimizer") or "-"), drop=2),
    Column("lr start", lambda r: _fmt(_start_lr(r), ".3g"), right=True, drop=1),
    Column("lr median", lambda r: _fmt(r.get("lr_median"), ".3g"), right=True, drop=0),
    Column("lr end", lambda r: _fmt(r.get("final_lr"), ".3g"), right=True),
    Column("steps", lambda r: _count(r.get("outcome_steps")), right=True, drop=5),
    Column("final loss", _final_loss, right=True),
    Column("outcome", lambda r: classify_run(r).status),
)


def _shorten(text: str, width: int, middle: bool) -> str:
    if len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    if middle:
        head = width // 2
        tail = width - 1 - head
        return text[:head] + ELLIPSIS + (text[-tail:] if tail else "")
    return text[: width - 1] + ELLIPSIS


def _fit_flexible(naturals: dict[str, int], room: int, floor: int) -> dict[str, int] | None:
    """Share ``room`` characters among the free-text columns, narrowest first, each at most its natural
    width (water filling); ``None`` when one would fall below ``floor``."""
    out: dict[str, int] = {}
    left = dict(naturals)
    while left:
        share = room // len(left)
        name = min(left, key=lambda n: left[n])
        w = min(left.pop(name), share)
        if w < min(floor, naturals[name]):
            return None
        out[name] = w
        room -= w
    return out


def format_table(df: Any, width: int = DEFAULT_WIDTH) -> str:
    """The runs of a history frame as an aligned text table no wider than ``width`` characters.

    Free-text columns (label, policy) give way first, down to :data:`COMFORTABLE` characters; then
    the least needed columns are dropped one by one; then the free text shrinks further.
    """
    rows = list(df.iter_rows(named=True))
    columns = list(COLUMNS)
    cells = {c.header: [c.cell(r) for r in rows] for c in columns}
    natural = {c.header: max([len(c.header), *(len(x) for x in cells[c.header])]) for c in columns}
    droppable = sorted((c for c in COLUMNS if c.drop is not None), key=lambda c: c.drop or 0)

    def attempt(floor: int) -> dict[str, int] | None:
        fixed = sum(natural[c.header] for c in columns if not c.flexible) + len(GAP) * (len(columns) - 1)
        flex = {c.header: natural[c.header] for c in columns if c.flexible}
        shares = _fit_flexible(flex, width - fixed, floor)
        return None if shares is None else {**natural, **shares}

    widths = attempt(COMFORTABLE)
    while widths is None and droppable:
        columns.remove(droppable.pop(0))
        widths = attempt(COMFORTABLE)
    widths = widths or attempt(NARROWEST) or {**natural, **{c.header: NARROWEST for c in columns if c.flexible}}

    def line(values: list[str]) -> str:
        parts = []
        for c, v in zip(columns, values):
            w = widths[c.header]
            v = _shorten(v, w, c.middle)
            parts.append(v.rjust(w) if c.right else v.ljust(w))
        return GAP.join(parts).rstrip()[:width]  # [:width]: only below any sensible width

    out = [line([c.header for c in columns]), line(["-" * widths[c.header] for c in columns])]
    out += [line([cells[c.header][i] for c in columns]) for i in range(len(rows))]
    return "\n".join(out)


def _json_value(v: Any) -> Any:
    """JSON has no NaN or infinity: a missing value (NaN) and an infinite one (clip off) become null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def history_records(df: Any) -> list[dict[str, Any]]:
    """Every run as a plain dict: every recorded field (the decision summary parsed from its JSON),
    plus ``outcome`` and ``outcome_reason``; non-finite numbers are None."""
    out = []
    for row in df.iter_rows(named=True):
        judged = classify_run(row)
        rec = {k: _json_value(v) for k, v in row.items() if k != "decisions_json"}
        if row.get("decisions_json"):
            try:
                rec["decisions"] = json.loads(row["decisions_json"])
            except ValueError:
                rec["decisions"] = None
        rec["outcome"], rec["outcome_reason"] = judged.status, judged.reason
        out.append(rec)
    return out


def to_json(df: Any) -> str:
    """The runs as a JSON array of objects (:func:`history_records`), parseable by any JSON reader."""
    return json.dumps(history_records(df), indent=1, allow_nan=False, default=str)


def to_csv(df: Any) -> str:
    """The runs as CSV with a header row: the fields of :func:`history_records`, the decision summary as JSON."""
    records = history_records(df)
    fields: list[str] = []
    for rec in records:
        fields += [k for k in rec if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else ("" if v is None else v) for k, v in rec.items()})
    return buf.getvalue()
