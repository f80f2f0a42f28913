"""Install the shipped default (policies/artifacts/default) with what validation chose, and its card.

The default is a residual policy (chuck.policies.learned: action = prior + actor).

* ``--residual zero`` (while no PPO snapshot has beaten the prior alone on the validation split):
  the snapshot's residual is set to zero, so the default acts exactly as ``load_policy(PRIOR)``,
  through the learned-policy machinery; a later snapshot that wins replaces it without any change
  for users.
* ``--residual keep``: the snapshot ships as trained, with its card (prior, observation ranges for
  the out-of-distribution fallback, training record): exactly what `chuck evaluate` measured.

Either way the card records the splits, the validation comparison it was chosen on and the test
split summaries it was reported on.

    python experiments/install_default.py --snapshot experiments/runs/default-v4/snapshots/00200192 \\
        --selection docs/results/validation/prior_warmup/summary.json \\
        --selection docs/results/validation/prior_warmup/summary_no_observe.json \\
        --test-summary docs/results/test_v10/summary.json \\
        --test-summary docs/results/test_v10/summary_no_observe.json --prior prior@10 --residual keep --note "..."

(the installed card's ``residual.why`` holds the note and ``residual.snapshot`` the snapshot used for
the shipped default. The training runs' snapshots are no longer in the tree: restore one from git
history first, e.g. ``git checkout b3d3e5d -- experiments/runs/default-v4``; docs/results/MANIFEST.md.)

``--update-card`` re-reports the installed default without touching its weights (their checksum, and
so every evaluation's record of which policy it measured, stay as they are): the card's test figures
are replaced by the given ``--test-summary`` files and ``--note`` is appended to ``residual.why``.
For figures re-measured after a change around the policy (a guardrail, the loader), not for a new
policy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from chuck.policies.artifact import CARD, load_artifact, save_artifact
from chuck.policies.card import KNOWN_PRIORS
from chuck.policies.prior import LATEST

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "policies" / "artifacts" / "default"
KEEP = ("name", "interval", "prior", "architecture", "training", "observation", "action")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snapshot", help="a PPO snapshot (its network shape and normalization are kept)")
    ap.add_argument(
        "--selection",
        action="append",
        default=[],
        help="chuck evaluate summary.json of the validation comparison (repeatable: with and without observe)",
    )
    ap.add_argument(
        "--update-card", action="store_true", help="keep the installed weights; replace the card's test figures, append --note"
    )
    ap.add_argument(
        "--test-summary", action="append", default=[], help="chuck evaluate summary.json on the test split (repeatable)"
    )
    ap.add_argument("--prior", default=f"prior@{LATEST}", choices=KNOWN_PRIORS, help="the built-in prior (default: %(default)s)")
    ap.add_argument(
        "--residual", choices=("zero", "keep"), default="zero", help="zero the snapshot's residual, or ship it as trained"
    )
    ap.add_argument("--note", default="", help="why this default (goes into the card)")
    args = ap.parse_args()
    if args.update_card:
        update_card(args.test_summary, args.note)
        return
    if not args.snapshot or not args.selection:
        ap.error("--snapshot and --selection are required (except with --update-card)")
    snap = load_artifact(args.snapshot)
    actor = snap.actor
    where = str(Path(args.snapshot).relative_to(ROOT)) if Path(args.snapshot).is_absolute() else args.snapshot
    if args.residual == "keep":
        if snap.card.get("prior") != args.prior:
            raise SystemExit(f"--prior {args.prior} but the snapshot is a residual on {snap.card.get('prior')}")
        # everything the snapshot's card says (observation ranges for the fallback, the training
        # record) except the in-training evaluation, which the validation/test summaries replace
        card = {k: v for k, v in snap.card.items() if k not in ("evaluation", "sha256")}
        card["residual"] = {"state": "learned", "why": args.note, "snapshot": where}
    elif not hasattr(actor, "action_net"):
        raise SystemExit(f"--residual zero needs one actor; {args.snapshot} is an ensemble: pass one of its members")
    else:
        with torch.no_grad():  # zero residual: the policy's action is the prior's
            actor.action_net.weight.zero_()
            actor.action_net.bias.zero_()
        card = {k: v for k, v in snap.card.items() if k in KEEP}
        card["prior"] = args.prior
        card["version"] = f"{args.prior.replace('@', '')}-residual-0"
        card["residual"] = {
            "state": "zero",
            "why": args.note or "no PPO snapshot has beaten the prior alone on the validation split yet",
            "snapshot": where,
        }
        # No observation range: the zero residual reads nothing, so an out-of-distribution fallback to
        # the heuristic would only replace the prior's well-defined behaviour by another rule.
    card["splits"] = {"trained_on": "train", "chose_design_and_checkpoint": "validation", "reported_on": "test"}
    card["evaluation"] = {"validation": {}}
    for path in args.selection:
        card["evaluation"]["validation"].update(_headlines(_read(path)))
    for path in args.test_summary:  # e.g. with and without observe(val_loss=...)
        summary = _read(path)
        card["evaluation"].setdefault("test", {}).update(_headlines(summary))
        _add_by_base(card["evaluation"], summary)
    save_artifact(actor, TARGET, card)
    load_artifact(TARGET)
    print(f"installed the default ({args.residual} residual on {args.prior}) -> {TARGET}")


def update_card(test_summaries: list[str], note: str) -> None:
    """The installed default's card with new test figures and a note; its weights untouched."""
    if not test_summaries or not note:
        raise SystemExit("--update-card needs --test-summary (one or more) and --note (what changed, why)")
    path = TARGET / CARD
    card = json.loads(path.read_text())
    test: dict[str, dict[str, float]] = {}
    evaluation = card.setdefault("evaluation", {})
    evaluation.pop("test_by_base", None)  # replaced with the new figures, like the test section
    for summary_json in test_summaries:
        summary = _read(summary_json)
        test.update(_headlines(summary))
        _add_by_base(evaluation, summary)
    evaluation["test"] = test
    residual = card.setdefault("residual", {})
    residual["why"] = f"{residual.get('why', '')} {note}".strip()
    # the new card is checked as a whole artifact (beside the untouched weights) before it replaces the old
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / "artifact"
        shutil.copytree(TARGET, trial)
        (trial / CARD).write_text(json.dumps(card, indent=2, sort_keys=True, default=float))  # as save_artifact writes it
        load_artifact(trial)
        staged = path.with_name(path.name + ".new")  # beside the card: the replace below is atomic
        shutil.copyfile(trial / CARD, staged)
        os.replace(staged, path)
    print(f"updated the card of {TARGET}: test figures from {', '.join(test_summaries)}")


#: The figures of each arm a card keeps: the middle (median, geo-mean, within 10%) and the tail (worst
#: regret, catastrophes against Prodigy on the same instance, harm at the tuned lr).
HEADLINES = ("runs", "median_regret", "geo_regret", "within_10pct", "worst_regret", "catastrophes", "harm_rate", "worst_harm")


def _read(summary_json: str | Path) -> dict:
    return json.loads(Path(summary_json).read_text())


def _headlines(summary: dict) -> dict[str, dict[str, float]]:
    """Per arm, the headline figures of a `chuck evaluate` summary (or of one of its ``by_base`` sections:
    an ``{arm: stats}`` mapping), leaving out those it could not compute."""
    arms = summary.get("arms", summary)
    return {arm: {k: v for k, v in stats.items() if k in HEADLINES and v is not None} for arm, stats in arms.items()}


def _add_by_base(evaluation: dict, summary: dict) -> None:
    """The summary's per-base-optimizer headlines, under ``evaluation["test_by_base"][base]``."""
    for base, arms in (summary.get("by_base") or {}).items():
        evaluation.setdefault("test_by_base", {}).setdefault(base, {}).update(_headlines(arms))


if __name__ == "__main__":
    main()
