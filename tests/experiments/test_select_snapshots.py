"""experiments/select_snapshots.py: a retrain's candidates read off its own held-out curve, as the
selection rules written before the measurements name them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.select_snapshots import candidates, commands, main

ROOT = Path(__file__).resolve().parents[2]
V7 = ROOT / "experiments" / "runs" / "default-v7"


def _evaluation(t: int, ret: float, arm: str = "trained") -> dict:
    return {"timesteps": t, "arm": arm, "heldout_return": ret}


def test_the_final_comes_first_then_the_best_late_ones() -> None:
    evals = [_evaluation(t, r) for t, r in [(100, 9.0), (200, 1.0), (300, 3.0), (400, 2.0), (500, 3.0), (600, 0.5)]]
    evals.append(_evaluation(450, 99.0, arm="reference"))  # another arm's row never counts
    assert candidates(evals, after=150, best=2) == [600, 500, 300]  # a tie goes to the later snapshot
    assert candidates(evals, after=150, best=0) == [600]
    with pytest.raises(ValueError, match="no held-out evaluation"):
        candidates([_evaluation(1, 1.0, arm="reference")], after=0, best=2)


@pytest.mark.skipif(not (V7 / "checkpoint" / "state.json").is_file(), reason="run v7 is not checked out")
def test_it_reproduces_the_snapshots_v7s_rule_chose() -> None:
    """docs/results.md measured v7's 200,192 (final), 150,016 and 155,136: the best two after 150k."""
    state = json.loads((V7 / "checkpoint" / "state.json").read_text())
    assert sorted(candidates(state["evaluations"], after=150_000, best=2)) == [150_016, 155_136, 200_192]


def test_the_commands_measure_every_candidate_on_every_base_the_rule_names() -> None:
    lines = commands(Path("runs/x"), [600, 500], "OUT")
    assert "--policies default,runs/x/snapshots/00000600,runs/x/snapshots/00000500" in lines[0]
    assert "--base-optimizer AdamW,SGD,Adafactor" in lines[0] and "--no-observe" in lines[1]
    paired = [line for line in lines if line.startswith("python experiments/paired_regret.py")]
    # per snapshot: AdamW and SGD with and without the parity, in both settings, and Adafactor with observe
    assert len(paired) == 2 * 9
    assert sum("chuck:default/no-observe chuck:runs/x/snapshots/00000600/no-observe" in line for line in paired) == 4
    assert not any("/no-observe" in line and "Adafactor" in line for line in paired)


def test_an_unfinished_run_is_refused_unless_asked(tmp_path, capsys) -> None:
    (tmp_path / "checkpoint").mkdir()
    state = {"timesteps": 300, "evaluations": [_evaluation(100, 1.0), _evaluation(300, 2.0)]}
    (tmp_path / "checkpoint" / "state.json").write_text(json.dumps(state))
    assert main([str(tmp_path), "--timesteps", "600"]) == 2
    assert "at 300 of 600 decisions" in capsys.readouterr().err
    assert main([str(tmp_path), "--timesteps", "300"]) == 0  # finished, its final evaluation made
    state["timesteps"] = 400  # saved after the last evaluation, stopped before the final one
    (tmp_path / "checkpoint" / "state.json").write_text(json.dumps(state))
    assert main([str(tmp_path), "--timesteps", "400"]) == 2
    assert "last held-out evaluation is at 300" in capsys.readouterr().err
    assert main([str(tmp_path), "--timesteps", "600", "--unfinished", "--after", "0", "--best", "1"]) == 0
    out = capsys.readouterr().out
    assert "snapshots/00000300" in out and "snapshots/00000100" in out and "(MISSING)" in out
