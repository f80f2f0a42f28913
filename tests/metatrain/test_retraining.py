"""Retraining on in-house tasks: what a fine-tuning run keeps, what it trains on, how it is judged and what it says."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

import chuck
from chuck import zoo
from chuck.cli.config import LATEST_PRIOR, MetaTrainConfig, evaluation_timesteps
from chuck.metatrain.comparison import VERDICTS, compare_arms, paired_ratio, summary_lines
from chuck.policies.prior import LATEST
from tests.metatrain.local_tasks import local_task as _local_task


def test_the_learning_curve_has_as_many_points_as_the_budget_has_policies() -> None:
    """An evaluation sits between two PPO updates; without --eval-every: min(5, updates), the last at the end."""
    assert evaluation_timesteps(256, 64) == [64, 128, 192, 256]  # 4 updates: 4 points
    assert evaluation_timesteps(1000, 512) == [512, 1024]  # 2 updates: 2 points, not 5 promised
    assert evaluation_timesteps(3000, 512) == [512, 1024, 2048, 2560, 3072]  # 6 updates: 5 points
    at = evaluation_timesteps(40_000, 512)
    assert len(at) == 5 and at[-1] == 79 * 512 and all(t % 512 == 0 for t in at)
    assert evaluation_timesteps(256, 64, eval_every=128) == [128, 256]
    assert evaluation_timesteps(256, 64, eval_every=100) == [128, 256]  # rounded up to the next update
    assert evaluation_timesteps(256, 64, eval_every=0) == [256]
    assert MetaTrainConfig(timesteps=3000).evaluation_timesteps() == evaluation_timesteps(3000, 512)


def test_the_default_prior_is_the_latest_unless_fine_tuning() -> None:
    assert f"prior@{LATEST}" == LATEST_PRIOR
    assert MetaTrainConfig().prior == LATEST_PRIOR
    assert MetaTrainConfig(init_policy="default").prior == "auto", "resolved from the starting policy's card"
    assert MetaTrainConfig(init_policy="default", prior="prior@15").prior == "prior@15"
    with pytest.raises(ValueError, match="zoo_share"):
        MetaTrainConfig(zoo_share=1.0)


def test_in_house_tasks_get_their_share_of_episodes_whatever_the_number_of_zoo_families() -> None:
    from chuck.metatrain.train import episode_weights

    local = _local_task("inhouse.share_test")
    zoo.register_task(local, replace=True)
    try:
        tasks = zoo.resolve_tasks("inhouse.share_test,train")
        w = episode_weights(tasks, {}, 0.5)
        zoo_ids = [t.id for t in tasks if t.id != "inhouse.share_test"]
        assert w["inhouse.share_test"] == pytest.approx(0.5) and sum(w[i] for i in zoo_ids) == pytest.approx(0.5)
        # task weights split a side's share; the other side keeps its own
        w = episode_weights(tasks, {zoo_ids[0]: 3.0}, 0.25)
        assert w["inhouse.share_test"] == pytest.approx(0.75) and w[zoo_ids[0]] == pytest.approx(3 * w[zoo_ids[1]])
        # one side only: the weights as given
        assert episode_weights(zoo.resolve_tasks("train"), {zoo_ids[0]: 2.0}, 0.5) == {zoo_ids[0]: 2.0}
    finally:
        zoo.unregister_task("inhouse.share_test")


def test_defaults_follow_the_registered_in_house_tasks() -> None:
    from chuck.metatrain.train import resolve_config

    assert not zoo.list_tasks("custom"), "precondition: no in-house task registered in this process"
    plain = resolve_config(MetaTrainConfig())
    assert (plain.tasks, plain.eval_tasks, plain.prior) == ("train", "validation", LATEST_PRIOR)
    assert plain.observation_version == chuck.ObservationSpec().version
    zoo.register_task(_local_task("inhouse.defaults_test"), replace=True)
    try:
        ours = resolve_config(MetaTrainConfig())
        assert (ours.tasks, ours.eval_tasks) == ("custom,train", "inhouse.defaults_test")
        given = resolve_config(MetaTrainConfig(tasks="custom", eval_tasks="validation"))
        assert (given.tasks, given.eval_tasks) == ("custom", "validation")
    finally:
        zoo.unregister_task("inhouse.defaults_test")


def test_held_out_seeds_are_never_training_seeds() -> None:
    from chuck.metatrain.train import HELDOUT_SEED, heldout_seed

    assert heldout_seed(MetaTrainConfig()) == HELDOUT_SEED
    for cfg in (MetaTrainConfig(n_envs=16), MetaTrainConfig(seed=HELDOUT_SEED - 3, eval_episodes=8)):
        first = heldout_seed(cfg)
        training = {cfg.seed + 1000 * i for i in range(cfg.n_envs)}
        assert not training & set(range(first, first + cfg.eval_episodes))


def test_missing_best_lr_entries_are_named_once_per_run() -> None:
    from chuck.metatrain.train import _say_uncalibrated

    class Uncalibrated(_local_task("inhouse.uncalibrated_test")):  # type: ignore[misc]
        best_lr = zoo.Task.best_lr  # no value of its own, no cache entry

    task = Uncalibrated()
    with pytest.warns(UserWarning, match=r"no best-lr entry for inhouse.uncalibrated_test.*python -m chuck.zoo.calibrate"):
        _say_uncalibrated([task, zoo.get_task("tabular.wine_mlp")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said: the episodes of this process do not say it again
        assert task.best_lr == zoo.FALLBACK_LR
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _say_uncalibrated([zoo.get_task("tabular.wine_mlp"), _local_task("inhouse.declared_test")()])


def test_a_calibration_in_chuck_home_is_read_for_an_in_house_task(tmp_path, monkeypatch) -> None:
    """``python -m chuck.zoo.calibrate`` writes in-house tasks to $CHUCK_HOME/best_lr.json; every process reads it."""
    from chuck.zoo import starting_lr
    from chuck.zoo.task import uncalibrated

    class Measured(_local_task("inhouse.measured_test")):  # type: ignore[misc]
        best_lr = zoo.Task.best_lr

    task = Measured()
    monkeypatch.setenv("CHUCK_HOME", str(tmp_path))
    entry = {"key": task.calibration_key, "budget": task.budget, "best_lr": 0.02}
    (tmp_path / "best_lr.json").write_text(json.dumps({"protocol": {}, "tasks": {task.id: entry}}))
    starting_lr.reload_cache()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert task.best_lr == 0.02 and uncalibrated([task]) == []
    finally:
        starting_lr.reload_cache()


def _rows(returns: list[float], task: str = "inhouse.t", fallbacks: int = 0) -> list[dict]:
    return [
        {"task_id": task, "seed": 10_000 + i, "return": r, "decisions": 10, "fallbacks": fallbacks} for i, r in enumerate(returns)
    ]


def test_paired_comparison_and_its_verdict() -> None:
    start = _rows([1.0, 1.2, 0.8, 1.1, 0.9, 1.0])
    better = _rows([1.2, 1.3, 1.0, 1.3, 1.0, 1.2])  # higher return = lower final loss on every instance
    c = paired_ratio(better, start)
    assert c is not None and c["instances"] == 6 and c["lower_on"] == 6 and c["verdict"] == "better"
    assert c["loss_ratio"] == pytest.approx(math.exp(-np.mean([0.2, 0.1, 0.2, 0.2, 0.1, 0.2])))
    assert c["interval"][0] <= c["loss_ratio"] <= c["interval"][1] < 1
    assert paired_ratio(start, better)["verdict"] == "worse"  # type: ignore[index]
    mixed = _rows([1.1, 1.1, 0.7, 1.2, 0.8, 1.0])
    assert paired_ratio(mixed, start)["verdict"] == "no clear difference"  # type: ignore[index]
    assert paired_ratio(better, _rows([1.0], task="other")) is None, "nothing pairs up"

    # the comparison is on the in-house tasks' instances, beside the zoo's
    zoo_rows = _rows([5.0, 5.0], task="cv.digits_mlp")
    out = compare_arms(better + zoo_rows, start + zoo_rows, start, in_house=["inhouse.t"], reference="default")
    assert out["start"]["tasks"] == ["inhouse.t"] and out["start"]["instances"] == 6
    lines = summary_lines(out, "models:/mine@candidate", list(range(10_000, 10_006)))
    assert lines[0] == "held-out: 6 instances of inhouse.t (seeds 10000-10005; no training environment is seeded with them)"
    assert any(line.startswith("  vs the start (default):") and "lower on 6 of 6" in line for line in lines)
    assert lines[-1] == "verdict: the retrained policy beats default on these tasks: use models:/mine@candidate"
    assert set(VERDICTS) == {"better", "worse", "no clear difference"}


def test_help_states_the_in_house_workflow(capsys) -> None:
    from chuck.cli.main import main

    with pytest.raises(SystemExit):
        main(["train-policy", "--help"])
    text = capsys.readouterr().out
    assert "retraining on your own tasks (docs/retraining.md):" in text
    assert "--zoo-share" in text and "95% bootstrap interval" in text


@pytest.mark.slow
def test_fine_tuning_keeps_what_the_starting_policy_knew_and_compares_with_it(tmp_path, monkeypatch) -> None:
    """Fine-tune the default on a tiny in-house task: the exported ranges contain the default's, the prior is
    the default's own (no warning), the zoo's train families get half the episodes, and the held-out
    evaluation is on the in-house task, with the default as the reference arm at timestep 0 and a paired
    comparison in the card."""
    from chuck.metatrain.train import train_policy

    monkeypatch.setenv("CHUCK_HOME", str(tmp_path / "home"))
    zoo.register_task(_local_task("inhouse.fine_tune_test"), replace=True)
    try:
        cfg = MetaTrainConfig(
            init_policy="default",
            timesteps=64,
            n_envs=2,
            interval=5,
            budget_scale=0.1,
            eval_episodes=4,
            checkpoint_every=10_000,
            output=str(tmp_path / "run"),
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            progress=False,
            name="fine-tuned",
            ppo={"n_steps": 16, "batch_size": 16, "n_epochs": 1},
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = train_policy(cfg)
    finally:
        zoo.unregister_task("inhouse.fine_tune_test")
    said = [str(w.message) for w in caught]
    assert not [m for m in said if "--init-policy" in m or "best-lr" in m], said

    default, tuned = chuck.load_policy("default"), chuck.load_policy(str(result.artifact_dir))
    assert tuned.card["prior"] == default.card["prior"] == result.config.prior  # type: ignore[union-attr]
    assert default.obs_low is not None and tuned.obs_low is not None and default.obs_high is not None
    assert np.all(tuned.obs_low <= default.obs_low) and np.all(tuned.obs_high >= default.obs_high)
    stats, before = tuned.card["observation_stats"], default.card["observation_stats"]
    # merged by observation counts: 64 new observations barely move 200k
    assert np.allclose(stats["mean"], before["mean"], rtol=1e-2, atol=1e-2)

    training = tuned.card["training"]
    assert result.config.tasks == "custom,train" and result.config.eval_tasks == "inhouse.fine_tune_test"  # type: ignore[union-attr]
    assert training["episode_weights"]["inhouse.fine_tune_test"] == pytest.approx(0.5)

    assert [(e["timesteps"], e["arm"]) for e in result.evaluations] == [(0, "start"), (32, "trained"), (64, "trained")]
    start = tuned.card["comparison"]["start"]
    assert start["instances"] == 4 and start["tasks"] == ["inhouse.fine_tune_test"] and start["verdict"] in VERDICTS
    assert set(start["seeds"]).isdisjoint({cfg.seed + 1000 * i for i in range(cfg.n_envs)})
    assert tuned.card["comparison"]["reference"] == "default"
    curve = (tmp_path / "run" / "evaluations.csv").read_text().splitlines()
    assert curve[1].startswith("0,start,")
    assert json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["reference_rows"]


def test_fine_tuning_keeps_the_observation_spec_its_starting_policy_reads() -> None:
    """An actor reads its inputs by position: fine-tuning the default (trained on an older spec) trains it on
    that spec, not on the newest, and another spec named for it is refused before anything starts."""
    from chuck.metatrain.train import SettingsConflict, _fine_tune_start, resolve_config

    cfg = MetaTrainConfig(init_policy="default")
    start = _fine_tune_start(cfg)
    if start.observation_version == chuck.ObservationSpec().version:
        pytest.skip("the default reads the newest spec: nothing tells keeping it from taking the newest")
    resolved = resolve_config(cfg, start)
    assert resolved.observation_version == start.observation_version == chuck.load_policy("default").observation_version
    newest = MetaTrainConfig(init_policy="default", observation_version=chuck.ObservationSpec().version)
    with pytest.raises(SettingsConflict, match="cannot be fine-tuned"):
        resolve_config(newest, start)


def test_an_unknown_observation_spec_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"observation_version must be one of \['1', '2', '3'\], got '9'"):
        MetaTrainConfig(observation_version="9")


def test_a_resumed_run_keeps_the_observation_spec_of_its_checkpoint(tmp_path) -> None:
    from chuck.metatrain.train import SettingsConflict, _with_checkpoint_observation

    state = tmp_path / "checkpoint" / "state.json"
    state.parent.mkdir()
    cfg = MetaTrainConfig(output=str(tmp_path))
    assert _with_checkpoint_observation(cfg).observation_version is None, "no checkpoint: the newest, resolved later"
    state.write_text(json.dumps({"observation_version": "2", "obs_low": [0.0] * 40}))
    assert _with_checkpoint_observation(cfg).observation_version == "2"
    with pytest.raises(SettingsConflict, match="resumes on v2"):
        _with_checkpoint_observation(MetaTrainConfig(output=str(tmp_path), observation_version="3"))
    state.write_text(json.dumps({"obs_low": [0.0] * 40}))  # saved before the version was recorded: 40 features is v2
    assert _with_checkpoint_observation(cfg).observation_version == "2"
    state.write_text(json.dumps({"obs_low": [0.0] * 37}))  # v1 or v3: the settings decide
    assert _with_checkpoint_observation(MetaTrainConfig(output=str(tmp_path), observation_version="3")).observation_version == "3"
