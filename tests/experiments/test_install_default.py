"""experiments/install_default.py: the card it writes keeps the tail figures, overall and per base optimizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import chuck
from experiments import install_default

ROOT = Path(__file__).resolve().parents[2]


def _summary(tmp_path: Path) -> Path:
    stats = {"runs": 4, "median_regret": 1.1, "geo_regret": 1.3, "within_10pct": 0.5, "worst_regret": 7.0, "catastrophes": 1}
    summary = {
        "arms": {
            "chuck:default": {**stats, "per_family": {"x": 1.0}},
            "chuck:default/no-observe": {**stats, "catastrophes": None},
        },
        "by_base": {"SGD": {"chuck:default": stats}, "AdamW": {"chuck:default": {**stats, "catastrophes": 0}}},
    }
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    return path


def test_update_card_keeps_the_tail_per_base_and_the_weights(tmp_path, monkeypatch) -> None:
    target = tmp_path / "default"
    shutil.copytree(ROOT / "policies" / "artifacts" / "default", target)
    monkeypatch.setattr(install_default, "TARGET", target)
    before = chuck.load_policy(str(target))
    install_default.update_card([str(_summary(tmp_path))], "re-measured")
    after = chuck.load_policy(str(target))
    evaluation = after.card["evaluation"]
    assert evaluation["test"]["chuck:default"]["catastrophes"] == 1 and evaluation["test"]["chuck:default"]["worst_regret"] == 7.0
    assert "per_family" not in evaluation["test"]["chuck:default"], "headlines only"
    assert "catastrophes" not in evaluation["test"]["chuck:default/no-observe"], (
        "a figure the summary could not compute is left out"
    )
    assert {b: s["chuck:default"]["catastrophes"] for b, s in evaluation["test_by_base"].items()} == {"SGD": 1, "AdamW": 0}
    assert after.card["sha256"] == before.card["sha256"] and after.card["residual"]["why"].endswith("re-measured")


def test_installing_a_snapshot_keeps_the_observation_spec_it_reads(tmp_path, monkeypatch) -> None:
    """A snapshot trained on an older observation spec than the newest installs with its own spec, zeroed or kept."""
    monkeypatch.setattr(install_default, "TARGET", tmp_path / "default")
    snapshot = ROOT / "policies" / "artifacts" / "default"
    version = chuck.load_policy(str(snapshot)).observation_version
    for residual in ("zero", "keep"):
        argv = ["install_default.py", "--snapshot", str(snapshot), "--selection", str(_summary(tmp_path))]
        monkeypatch.setattr("sys.argv", [*argv, "--prior", "prior@10", "--residual", residual])
        install_default.main()
        assert chuck.load_policy(str(tmp_path / "default")).observation_version == version
