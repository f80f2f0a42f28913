"""``chuck evaluate``: end to end via the CLI, resume, input checks, oracle cache, divergence, crashes.

The tasks are two tiny synthetic classification families registered for the test (40 steps
at ``budget_scale=0.1``) and the oracle sweep is reduced to three lrs; the default sweep is
checked separately.
"""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import chuck
from chuck import zoo
from chuck.cli.main import main
from chuck.evaluation import FAILED_REGRET, ORACLE_LRS, ROW_FIELDS, EvaluationInputError, evaluate, schedule
from chuck.evaluation.oracle import oracle_runs
from chuck.evaluation.runs import RunSpec, run_one
from chuck.policies.artifact import bundled_artifact_dir
from chuck.zoo import SearchSpace, SupervisedInstance, Task, make_optimizer

SCALE = 0.1  # 400-step budgets -> 40 steps
ORACLE = [1e-3, 1e-2, 1e-1]
N_ORACLE = len(oracle_runs(tuple(ORACLE)))  # 2 x 3 + Prodigy once


class TinyTask(Task):
    """A 3-class problem on fixed Gaussian data, a one-hidden-layer MLP (milliseconds per step)."""

    domain, budget = "test", 400
    space = SearchSpace(widths=(16, 32), depths=(1,), norms=("none",), batch_sizes=(32,), dropouts=(0.0,), weight_decays=(0.0,))

    def __init__(self, task_id: str = "test.tiny_a", data_seed: int = 0, crash_above_lr: float | None = None) -> None:
        self.id, self.data_seed, self.crash_above_lr = task_id, data_seed, crash_above_lr

    @property
    def best_lr(self) -> float:  # instead of a calibration (the zoo draws starting lrs around it)
        return 1e-2

    def build(self, config):
        g = torch.Generator().manual_seed(self.data_seed)
        x = torch.randn(256, 8, generator=g)
        y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
        model = nn.Sequential(nn.Linear(8, config.width), nn.Tanh(), nn.Linear(config.width, 3))
        opt = make_optimizer(config.optimizer, model.parameters(), config.lr, config.weight_decay)
        inst = SupervisedInstance(model, opt, config, (x[:192], y[:192]), (x[192:], y[192:]), F.cross_entropy, math.log(3))
        if self.crash_above_lr is not None and config.lr > self.crash_above_lr:
            step = inst.train_step

            def crashing_step(calls=[0]):  # noqa: B006 - a counter shared by this instance's calls
                calls[0] += 1
                if calls[0] > 10:
                    raise RuntimeError("simulated crash in the user's training code")
                return step()

            inst.train_step = crashing_step
        return inst


@pytest.fixture
def tiny_tasks():
    tasks = [TinyTask("test.tiny_a", 0), TinyTask("test.tiny_b", 1), TinyTask("test.tiny_crash", 2, crash_above_lr=0.05)]
    for t in tasks:
        zoo.register_task(t, replace=True)
    yield tasks
    for t in tasks:
        zoo.unregister_task(t.id)


@pytest.fixture
def count_runs(monkeypatch):
    """Counts the runs actually executed (workers=1 runs them in this process)."""
    calls: list[RunSpec] = []

    def counting(spec):
        calls.append(spec)
        return run_one(spec)

    monkeypatch.setattr(schedule, "run_one", counting)
    return calls


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _small(out, **kw):
    args = {
        "policies": ["heuristic"],
        "baselines": ["adamw", "prodigy"],
        "tasks": "test.tiny_a",
        "lrs": [1e-3],
        "seeds": [0],
        "out": out,
        "budget_scale": SCALE,
        "oracle_lrs": ORACLE,
        "mlflow": False,
        "progress": False,
    }
    args.update(kw)
    return evaluate(**args)


def _register_default_policy(name: str) -> str:
    """The bundled default policy registered in chuck's MLflow store, as ``models:/NAME@champion``."""
    from chuck import tracking
    from chuck.policies.artifact import bundled_artifact_dir

    mlflow = tracking.setup(None, "policies")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(bundled_artifact_dir("default")), "policy")
    tracking.register_artifact(run.info.run_id, "policy", name, "champion")
    return f"models:/{name}@champion"


def test_cli_end_to_end_rows_summary_plot_and_mlflow(tiny_tasks, tmp_path, capsys):
    out = tmp_path / "eval"
    registered = _register_default_policy("tiny-policy")
    rc = main(
        [
            "evaluate",
            "--policies",
            f"heuristic,{registered}",
            "--baselines",
            "adamw,cosine,prodigy",
            "--tasks",
            "test.tiny_a,test.tiny_b",
            "--lrs",
            "1e-3,1e-1",
            "--seeds",
            "0",
            "--budget-scale",
            str(SCALE),
            "--oracle-lrs",
            ",".join(map(str, ORACLE)),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    assert "chuck:heuristic" in capsys.readouterr().out
    rows = _rows(out / "rows.csv")
    assert tuple(rows[0]) == ROW_FIELDS
    main_rows = [r for r in rows if r["kind"] == "main"]
    probes = [r for r in rows if r["kind"] == "harm_probe"]
    assert len(main_rows) == 2 * 2 * 5 and len(probes) == 2 * 5  # tasks x lrs x arms; one probe per arm and task
    assert {r["steps"] for r in rows} == {"40"}
    for r in rows:
        assert float(r["regret"]) > 0 and math.isfinite(float(r["regret"]))
        assert r["error"] == "", r  # the registered policy loaded in the runs too
    for r in probes:  # harm is measured at the instance's best constant lr, against constant AdamW there
        assert float(r["lr"]) == float(r["best_lr"]) and float(r["lr"]) in ORACLE
        if r["arm"] == "adamw":
            assert float(r["harm"]) == 1.0

    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["arms"]) == ["chuck:heuristic", f"chuck:{registered}", "adamw", "cosine", "prodigy"]
    for arm, s in summary["arms"].items():
        for key in ("median_regret", "geo_regret", "within_10pct", "harm_rate", "worst_harm"):
            assert math.isfinite(s[key]), (arm, key)
        for key in ("median_regret", "geo_regret"):
            lo, hi = s[key + "_ci"]
            assert lo <= s[key] <= hi, (arm, key)
        assert s["runs"] == 4 and 0 <= s["harm_rate"] <= 1
        assert set(s["per_lr"]) == {repr(1e-3), repr(1e-1)}
        assert set(s["per_family"]) == {"test.tiny_a", "test.tiny_b"}
        assert s["per_family"]["test.tiny_a"]["harm_runs"] == 1
        for sub in [*s["per_lr"].values(), *s["per_family"].values()]:
            lo, hi = sub["geo_regret_ci"]
            assert lo <= sub["geo_regret"] <= hi
    # Prodigy ignores the starting lr: the same run stands for both
    prodigy = {r["lr"]: r["final_loss"] for r in main_rows if r["arm"] == "prodigy" and r["task_id"] == "test.tiny_a"}
    assert len(set(prodigy.values())) == 1
    png = out / "regret_by_lr.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    import mlflow

    from chuck.tracking.store import default_tracking_uri

    client = mlflow.MlflowClient(default_tracking_uri())
    exp = client.get_experiment_by_name("chuck-evaluate")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1 and len(runs) == 1 + 5
    assert parent[0].info.run_id == summary["mlflow_run_id"]
    assert math.isclose(
        parent[0].data.metrics["chuck:heuristic.median_regret"], summary["arms"]["chuck:heuristic"]["median_regret"]
    )
    hindsight = summary["hindsight"]["tuned cosine"]  # logged beside the arms
    assert math.isclose(parent[0].data.metrics["hindsight.tuned_cosine.geo_regret"], hindsight["geo_regret"])
    artifacts = {a.path for a in client.list_artifacts(parent[0].info.run_id)}
    assert {"summary.json", "regret_by_lr.png", "rows.csv"} <= artifacts


def test_resume_skips_finished_runs(tiny_tasks, tmp_path, count_runs):
    out = tmp_path / "eval"
    first = _small(out, lrs=[1e-3, 3e-4])
    n_rows = len(_rows(out / "rows.csv"))
    assert first.executed == len(count_runs) > N_ORACLE
    count_runs.clear()
    second = _small(out, lrs=[1e-3, 3e-4])
    assert len(count_runs) == 0 and second.executed == 0
    assert len(_rows(out / "rows.csv")) == n_rows
    assert second.to_dict()["arms"] == first.to_dict()["arms"]
    # an interrupted evaluation: drop two finished chuck rows; only those two runs are redone
    rows = _rows(out / "rows.csv")
    dropped = [r for r in rows if r["arm"] == "chuck:heuristic" and r["kind"] == "main"]
    assert len(dropped) == 2
    with open(out / "rows.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ROW_FIELDS)
        w.writeheader()
        w.writerows(r for r in rows if r not in dropped)
    third = _small(out, lrs=[1e-3, 3e-4])
    assert len(count_runs) == 2 and {s.arm for s in count_runs} == {"chuck:heuristic"}
    assert third.to_dict()["arms"] == first.to_dict()["arms"]


@pytest.mark.parametrize(
    "flag,value,needle",
    [
        ("--policies", "{tmp}/no_such_policy", "no_such_policy"),
        ("--tasks", "test.no_such_task", "test.no_such_task"),
        ("--baselines", "adamw,lion", "lion"),
    ],
)
def test_bad_input_fails_before_any_run(tiny_tasks, tmp_path, capsys, count_runs, flag, value, needle):
    out = tmp_path / "eval"
    args = {"--policies": "heuristic", "--baselines": "adamw", "--tasks": "test.tiny_a"}
    args[flag] = value.format(tmp=tmp_path)
    argv = [
        "evaluate",
        *[x for kv in args.items() for x in kv],
        "--lrs",
        "1e-3",
        "--seeds",
        "0",
        "--budget-scale",
        str(SCALE),
        "--out",
        str(out),
        "--no-mlflow",
        "--no-progress",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error" in err and needle in err
    assert count_runs == [] and not (out / "rows.csv").exists()
    with pytest.raises(EvaluationInputError):
        _small(out, **{flag[2:]: [value.format(tmp=tmp_path)]})


def test_oracle_cache_is_reused_and_invalidated_by_a_budget_change(tiny_tasks, tmp_path):
    from chuck.core.home import chuck_home

    first = _small(tmp_path / "a", policies=[], baselines=["adamw"])
    assert first.oracle_executed == N_ORACLE
    cached = _small(tmp_path / "b", policies=[], baselines=["adamw"])
    assert cached.oracle_executed == 0 and cached.executed == 0  # adamw@1e-3 is a sweep run: reused too
    assert cached.arms["adamw"].median_regret == first.arms["adamw"].median_regret
    tiny_tasks[0].budget = 300  # 30 steps now: the cached sweep no longer applies
    changed = _small(tmp_path / "c", policies=[], baselines=["adamw"])
    assert changed.oracle_executed == N_ORACLE
    assert {r["steps"] for r in _rows(tmp_path / "c" / "rows.csv")} == {"30"}
    assert len(list((chuck_home() / "oracle").glob("*.json"))) == 2


def test_diverging_arm_counts_as_regret_100(tiny_tasks, tmp_path):
    s = _small(tmp_path / "eval", baselines=["adamw"], lrs=[1e-3, 10.0])
    bad = [r for r in _rows(tmp_path / "eval" / "rows.csv") if r["kind"] == "main" and r["lr"] == "10.0"]
    assert {r["arm"] for r in bad} == {"chuck:heuristic", "adamw"}
    adamw = next(r for r in bad if r["arm"] == "adamw")
    assert adamw["diverged"] == "True" and float(adamw["regret"]) == FAILED_REGRET
    assert s.arms["adamw"].runs == 2 and s.arms["adamw"].diverged == 1
    assert s.arms["adamw"].per_lr[repr(10.0)].geo_regret == pytest.approx(FAILED_REGRET)


def test_crashing_run_is_shown_with_regret_100(tiny_tasks, tmp_path):
    s = _small(tmp_path / "eval", tasks="test.tiny_crash", baselines=["adamw"], lrs=[1e-3, 0.1])
    crashed = [r for r in _rows(tmp_path / "eval" / "rows.csv") if r["error"]]
    # every arm started above 0.05 crashes; so do the sweep's 0.1 runs and Prodigy (lr 1.0), left out of the oracle
    assert {(r["arm"], r["lr"]) for r in crashed if r["kind"] == "main"} == {("chuck:heuristic", "0.1"), ("adamw", "0.1")}
    assert all(float(r["regret"]) == FAILED_REGRET and "simulated crash" in r["error"] for r in crashed)
    assert s.arms["adamw"].errors == 1 and s.arms["adamw"].runs == 2
    assert math.isfinite(s.arms["adamw"].geo_regret)


def test_common_random_numbers_in_process_and_in_workers(tiny_tasks, tmp_path, monkeypatch):
    spec = RunSpec("test.tiny_b", 0, "chuck:heuristic", 1e-2, 40, policy="heuristic")
    a, b = run_one(spec), run_one(spec)
    assert a["error"] == "" and a["final_loss"] == b["final_loss"]
    inline = _small(tmp_path / "one", tasks="test.tiny_b", baselines=["adamw"], workers=1)
    monkeypatch.setenv("CHUCK_HOME", str(tmp_path / "other_home"))  # no oracle cache: the pool reruns everything
    pooled = _small(tmp_path / "two", tasks="test.tiny_b", baselines=["adamw"], workers=2)
    assert pooled.executed == inline.executed
    key = lambda r: (r["kind"], r["arm"], r["lr"])  # noqa: E731
    one = {key(r): r["final_loss"] for r in _rows(tmp_path / "one" / "rows.csv")}
    two = {key(r): r["final_loss"] for r in _rows(tmp_path / "two" / "rows.csv")}
    assert one == two


def test_no_observe_never_reports_validation(tiny_tasks, tmp_path, monkeypatch, count_runs):
    seen: list[float] = []
    real = chuck.ChuckOptimizer.observe

    def spy(self, val_loss=None, **metrics):
        seen.append(float(val_loss))
        return real(self, val_loss, **metrics)

    monkeypatch.setattr(chuck.ChuckOptimizer, "observe", spy)
    s = _small(tmp_path / "off", baselines=[], observe=False)
    assert list(s.arms) == ["chuck:heuristic/no-observe"] and seen == []
    assert count_runs
    count_runs.clear()
    _small(tmp_path / "on", baselines=[])
    chuck_runs = [r for r in count_runs if r.arm == "chuck:heuristic"]
    assert chuck_runs and len(seen) == 2 * len(chuck_runs)  # evaluations at steps 20 and 40 of each run


def test_both_settings_share_a_directory_and_keep_their_own_summaries(tiny_tasks, tmp_path, count_runs):
    out = tmp_path / "both"
    _small(out, baselines=["adamw"], observe=False)
    assert (out / "summary_no_observe.json").exists() and (out / "regret_by_lr_no_observe.png").exists()
    assert not (out / "summary.json").exists() and not (out / "regret_by_lr.png").exists()
    count_runs.clear()
    _small(out, baselines=["adamw"])
    assert not [r for r in count_runs if r.arm == "adamw"]  # the baseline's rows and the oracle were reused
    on = json.loads((out / "summary.json").read_text())
    off = json.loads((out / "summary_no_observe.json").read_text())  # not overwritten by the second call
    assert list(on["arms"]) == ["chuck:heuristic", "adamw"] and on["settings"]["observe"] is True
    assert list(off["arms"]) == ["chuck:heuristic/no-observe", "adamw"] and off["settings"]["observe"] is False
    assert "chuck:heuristic/no-observe" in (out / "summary_no_observe.md").read_text()


def _artifact_copy(dst, **card_changes):
    """The bundled default policy copied to ``dst``, its card changed by ``card_changes``."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(bundled_artifact_dir("default"), dst)
    card = json.loads((dst / "policy.json").read_text())
    card.update(card_changes)
    (dst / "policy.json").write_text(json.dumps(card))
    return dst


def test_resuming_refuses_rows_of_another_policy_under_the_same_name(tiny_tasks, tmp_path, count_runs):
    policy, out = tmp_path / "policy", tmp_path / "eval"
    _artifact_copy(policy)
    _small(out, policies=[str(policy)], baselines=[])
    arm = f"chuck:{policy}"
    assert arm in json.loads((out / "arms.json").read_text())

    # the card's evaluation summaries are written after a policy is measured: not a new policy
    _artifact_copy(policy, evaluation={"test": {"note": "written after the evaluation"}})
    count_runs.clear()
    _small(out, policies=[str(policy)], baselines=[])
    assert not count_runs

    # the same path now holds a policy on another prior: its old rows must not be resumed
    _artifact_copy(policy, prior="prior@15")
    count_runs.clear()
    rows_before = (out / "rows.csv").read_text()
    with pytest.raises(EvaluationInputError, match="another policy under the same arm name") as err:
        _small(out, policies=[str(policy)], baselines=[])
    assert arm in str(err.value) and "prior@15" in str(err.value)
    assert not count_runs and (out / "rows.csv").read_text() == rows_before  # nothing ran, nothing lost

    # what the message says to do: drop that arm's rows, and it is measured again with the new policy
    rows = [r for r in _rows(out / "rows.csv") if r["arm"] != arm]
    with open(out / "rows.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    _small(out, policies=[str(policy)], baselines=[])
    assert [r for r in count_runs if r.arm == arm]
    assert "prior@15" in json.loads((out / "arms.json").read_text())[arm]


def test_recorded_summarizes_every_arm_of_earlier_calls_without_running_again(tiny_tasks, tmp_path, count_runs):
    """A summary covers the arms of the call that wrote it; ``policies="recorded"`` stands for every chuck
    arm the directory holds in that setting, so the summary of all of them is one resumed call."""
    out = tmp_path / "eval"
    _small(out, policies=["heuristic"], baselines=["adamw"])
    _small(out, policies=["prior@15"], baselines=[])
    _small(out, policies=["constant"], baselines=[], observe=False)
    assert set(json.loads((out / "summary.json").read_text())["arms"]) == {"chuck:prior@15"}  # the last call's only
    count_runs.clear()
    both = _small(out, policies="recorded", baselines=["adamw"])
    assert not count_runs and both.executed == 0
    assert set(both.to_dict()["arms"]) == {"chuck:heuristic", "chuck:prior@15", "adamw"}
    assert set(json.loads((out / "summary.json").read_text())["arms"]) == {"chuck:heuristic", "chuck:prior@15", "adamw"}
    alone = _small(out, policies="recorded", baselines=[], observe=False)
    assert set(alone.to_dict()["arms"]) == {"chuck:constant/no-observe"} and not count_runs
    with pytest.raises(EvaluationInputError, match="records no chuck arm measured with observe"):
        _small(tmp_path / "empty", policies="recorded", baselines=[])


def test_policy_identity_of_builtins():
    from chuck.evaluation.identity import policy_identity
    from chuck.policies.prior import LATEST

    assert policy_identity("prior") == f"prior@{LATEST}" and policy_identity("prior@3") == "prior@3"
    assert policy_identity("heuristic") == "heuristic"
    card = json.loads((bundled_artifact_dir("default") / "policy.json").read_text())
    assert card["sha256"][:12] in policy_identity("default") and card["version"] in policy_identity("default")


def test_default_oracle_sweep_is_dense():
    assert len(ORACLE_LRS) >= 7 and min(ORACLE_LRS) <= 1e-5 and max(ORACLE_LRS) >= 1e-1
    ratios = [b / a for a, b in zip(ORACLE_LRS, ORACLE_LRS[1:])]
    assert all(3.0 < r < 3.3 for r in ratios)  # half decades
    runs = oracle_runs(ORACLE_LRS)
    assert {a for a, _ in runs} == {"adamw", "cosine", "prodigy"} and len(runs) == 2 * len(ORACLE_LRS) + 1


def _resolution(**kw):
    from chuck.evaluation.resolution import replay_references

    args = {"seeds": [0], "budget_scale": SCALE, "oracle_lrs": tuple(ORACLE)}
    return replay_references(**(args | kw))


def test_replays_reproduce_the_references_and_perturbed_ones_move(tiny_tasks):
    res = _resolution(tasks=[tiny_tasks[0], tiny_tasks[1]])
    assert res.instances == 2 and res.reproduced == 2 and res.mismatches == []
    # two references (oracle winner, tuned-lr AdamW) x two perturbations per instance
    assert len(res.rows) == 8 and {r["reference"] for r in res.rows} == {"oracle", "tuned"}
    ratios = [r["ratio"] for r in res.rows]
    assert all(0.9 < x < 1.1 for x in ratios)  # a smooth problem: a thousandth of lr moves the loss a little
    assert any(x != 1.0 for x in ratios)  # ... but it does move it: the perturbation is applied
    assert res.oracle.runs == 4 and res.tuned is not None and res.tuned.harm_runs == 4
    assert set(res.per_family) == {"test.tiny_a", "test.tiny_b"}


def test_a_stale_reference_is_reported_not_measured(tiny_tasks):
    from chuck.evaluation.oracle import OracleCache, instance_key
    from chuck.evaluation.runs import instance_config, steps_for

    task = tiny_tasks[0]
    _resolution(tasks=[task])  # fills the oracle cache
    steps = steps_for(task, SCALE)
    cache = OracleCache(instance_key(task, 0, SCALE, steps, instance_config(task, 0)))
    for rid, result in cache.runs.items():  # injected fault: a cache that no longer matches the code
        cache.add(rid, result | {"final_loss": result["final_loss"] * 0.5, "error": ""})
    res = _resolution(tasks=[task])
    assert res.reproduced == 0 and res.mismatches and "ratio 2.0" in res.mismatches[0]


def test_lr_scale_moves_every_arm_including_prodigy(tiny_tasks):
    for arm in ("adamw", "prodigy"):
        base = run_one(RunSpec("test.tiny_a", 0, arm, 1e-2, 20))
        moved = run_one(RunSpec("test.tiny_a", 0, arm, 1e-2, 20, lr_scale=1.001))
        assert base["error"] == moved["error"] == "" and base["final_loss"] != moved["final_loss"], arm


@pytest.mark.parametrize("eps", [(), (0.0,), (0.5,), (float("nan"),)])
def test_replay_perturbations_must_be_small_and_nonzero(tiny_tasks, eps):
    with pytest.raises(ValueError, match="eps"):
        _resolution(tasks=[tiny_tasks[0]], eps=eps)


def test_harm_beyond_the_aa_floor_counts_only_probes_outside_their_instances_spread():
    from chuck.evaluation.resolution import harm_against_aa

    replays = {("t.a", 0): [1.0, 1.3], ("t.b", 0): [1.0, 0.99]}  # t.a is chaotic at its tuned lr, t.b is not
    rows = [{"reference": "tuned", "task_id": t, "seed": s, "ratio": x} for (t, s), xs in replays.items() for x in xs]
    rows.append({"reference": "oracle", "task_id": "t.a", "seed": 0, "ratio": 9.0})  # not a harm replay
    probes = [
        {"arm": "x", "task_id": "t.a", "seed": "0", "harm": "1.25"},  # as read from rows.csv
        {"arm": "x", "task_id": "t.b", "seed": 0, "harm": 1.10},
        {"arm": "x", "task_id": "t.c", "seed": 0, "harm": 3.0},  # t.c was not replayed: left out
    ]
    table = harm_against_aa(rows, probes)
    x = table["x"]
    assert x["probes"] == 2 and x["harm_rate"] == 1.0 and x["severe_rate"] == 0.5 and x["worst"] == 1.25
    assert x["beyond_aa"] == 0.5  # t.a's 1.25 is inside its replays' spread (1.3), t.b's 1.10 is not
    assert table["A/A"] == {"probes": 4, "harm_rate": 0.25, "severe_rate": 0.25}


def test_cli_aa_control_puts_the_noise_floor_next_to_every_arms_harm(tiny_tasks, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", "--policies", "heuristic", "--baselines", "adamw,cosine", "--tasks", "test.tiny_a,test.tiny_b"]
    args += ["--lrs", "1e-3", "--seeds", "0", "--budget-scale", str(SCALE), "--oracle-lrs", ",".join(map(str, ORACLE))]
    rc = main([*args, "--out", str(out), "--no-progress", "--aa-control"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "A/A control" in printed and "harm beyond the A/A" in printed
    summary = json.loads((out / "summary.json").read_text())
    aa = summary["aa_control"]
    assert aa["instances"] == aa["reproduced"] == 2 and aa["eps"] == [1e-3, -1e-3]
    assert aa["oracle"]["runs"] == 4 and aa["harm"]["probes"] == 4 and 0 <= aa["harm"]["harm_rate"] <= 1
    for arm, s in summary["arms"].items():
        assert s["harm_beyond_aa"] is not None and 0 <= s["harm_beyond_aa"] <= s["harm_rate"], arm
    assert summary["arms"]["adamw"]["harm_beyond_aa"] == 0.0  # AdamW at the tuned lr is its own reference
    assert aa["plot"] == str(out / "aa_control.png") and (out / "aa_control.png").read_bytes()[:4] == b"\x89PNG"
    replays = json.loads((out / "aa_replays.json").read_text())
    assert len(replays) == 2 * 2 * 2 and {r["eps"] for r in replays} == {1e-3, -1e-3}

    import mlflow

    from chuck.tracking.store import default_tracking_uri

    parent = mlflow.MlflowClient(default_tracking_uri()).get_run(summary["mlflow_run_id"])
    assert math.isclose(parent.data.metrics["aa.oracle.geo_regret"], aa["oracle"]["geo_regret"])
    assert math.isclose(parent.data.metrics["aa.tuned.harm_rate"], aa["harm"]["harm_rate"])
    assert "chuck:heuristic.harm_beyond_aa" in parent.data.metrics
    client = mlflow.MlflowClient(default_tracking_uri())
    assert "aa_control.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}

    rc = main([*args, "--out", str(tmp_path / "plain"), "--no-progress", "--no-mlflow"])  # off by default
    plain = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert rc == 0 and plain["aa_control"] is None and not (tmp_path / "plain" / "aa_replays.json").exists()


def _sweep(cosine, adamw, prodigy=5.0, grid=(1e-3, 1e-2, 1e-1)):
    """Finished sweep results as the oracle cache holds them (None: that run crashed)."""

    def result(loss):
        if loss is None:
            return {"error": "RuntimeError: boom", "final_loss": math.nan, "initial_loss": 3.0, "loss_reference": 1.0}
        return {"error": "", "diverged": False, "final_loss": loss, "initial_loss": 3.0, "loss_reference": 1.0}

    from chuck.evaluation.runs import run_id

    runs = {run_id("cosine", lr): result(x) for lr, x in zip(grid, cosine, strict=True)}
    runs |= {run_id("adamw", lr): result(x) for lr, x in zip(grid, adamw, strict=True)}
    return runs | {run_id("prodigy", 1.0): result(prodigy)}


def test_hindsight_rows_are_the_sweeps_tuned_runs_over_its_oracle():
    from chuck.evaluation.hindsight import COSINE_STEP_HIGHER, COSINE_STEP_LOWER, TUNED_CONSTANT, TUNED_COSINE, instance_rows

    grid = (1e-3, 1e-2, 1e-1)
    rows = instance_rows(_sweep([2.0, 1.0, 3.0], [1.5, 0.8, 4.0]), grid, "t.a", "t.a", 0)
    got = sorted((r["arm"], r["lr"], round(r["regret"], 6)) for r in rows)
    assert got == [
        (COSINE_STEP_HIGHER, 1e-1, 3.75),  # both neighbours of the best cosine lr, over the oracle (AdamW's 0.8)
        (COSINE_STEP_LOWER, 1e-3, 2.5),
        (TUNED_CONSTANT, 1e-2, 1.0),
        (TUNED_COSINE, 1e-2, 1.25),
    ]
    assert {r["oracle_loss"] for r in rows} == {0.8} and {(r["task_id"], r["seed"]) for r in rows} == {("t.a", 0)}
    # the best cosine lr at the grid's edge has one neighbour; a crashed neighbour counts as a failed run
    edge = instance_rows(_sweep([1.0, None, 3.0], [2.0, 2.0, 2.0]), grid, "t.b", "t.b", 1)
    off = [r for r in edge if r["arm"] in (COSINE_STEP_LOWER, COSINE_STEP_HIGHER)]
    assert [r["arm"] for r in off] == [COSINE_STEP_HIGHER] and off[0]["lr"] == 1e-2
    assert off[0]["error"] and off[0]["regret"] == FAILED_REGRET
    # ties between constant lrs go to the lower one, as the harm reference's do
    assert [r["lr"] for r in edge if r["arm"] == TUNED_CONSTANT] == [1e-3]
    # Prodigy's win sets the oracle without being a hindsight row; an all-crashed sweep gives none
    assert {r["regret"] for r in instance_rows(_sweep([2.0] * 3, [4.0] * 3, 1.0), grid, "t", "t", 0)} == {2.0, 4.0}
    assert instance_rows(_sweep([None] * 3, [None] * 3, None), grid, "t", "t", 0) == []


def test_every_summary_says_what_hindsight_tuning_reaches(tiny_tasks, tmp_path):
    from chuck.evaluation.hindsight import NAMES, rows_from_cache

    summary = _small(tmp_path / "eval", tasks="test.tiny_a,test.tiny_b", seeds=[0, 1])
    # in NAMES' order; a step row only where a neighbour exists (the tiny tasks' best cosine lr is the grid's top)
    assert list(summary.hindsight) == [n for n in NAMES if n in summary.hindsight]
    assert {"tuned cosine", "tuned constant", "cosine one lr step lower"} <= set(summary.hindsight)
    tuned = summary.hindsight["tuned cosine"]
    assert tuned["runs"] == 4 and tuned["median_regret"] >= 1.0  # never below the sweep it was picked from
    # the same figures straight from the cache, without a run (the script's path); uncached seeds are named
    rows, missing, incomplete = rows_from_cache(tiny_tasks[:2], [0, 1, 7], SCALE, tuple(ORACLE))
    assert missing == ["test.tiny_a seed 7", "test.tiny_b seed 7"] and incomplete == []
    cosine = sorted(r["regret"] for r in rows if r["arm"] == "tuned cosine")
    assert math.isclose(float(np.median(cosine)), tuned["median_regret"])
    md = (tmp_path / "eval" / "summary.md").read_text()
    assert "Hindsight" in md and "| cosine one lr step lower |" in md


@pytest.mark.parametrize("arm", ["prodigy-sf", "ldog"])
def test_lr_free_peers_train_and_ignore_the_starting_lr(tiny_tasks, arm):
    """Prodigy + Schedule-Free and LDoG run as baselines; like Prodigy, one run stands for every starting lr."""
    from chuck.evaluation.runs import effective_lr, run_id

    low = run_one(RunSpec("test.tiny_a", 0, arm, 1e-4, 20))
    high = run_one(RunSpec("test.tiny_a", 0, arm, 1e-1, 20))
    assert low["error"] == high["error"] == "" and math.isfinite(low["final_loss"])
    assert low["final_loss"] == high["final_loss"]
    assert effective_lr(arm, 1e-4) == effective_lr(arm, 1e-1) and run_id(arm, 1e-4) == run_id(arm, 1e-1)


def test_catastrophes_count_runs_a_peer_survives_and_worst_regret_is_reported():
    from chuck.evaluation.stats import summarize_arms

    def row(arm, task, seed, regret, family="f"):
        return {
            "arm": arm,
            "kind": "main",
            "task_id": task,
            "family": family,
            "seed": seed,
            "lr": 1e-3,
            "regret": regret,
            "diverged": False,
            "error": "",
        }

    rows = [
        row("prodigy", "a", 0, 1.5),
        row("prodigy", "b", 0, 3.0),  # the peer is fine on a, not on b
        row("chuck:x", "a", 0, 6.0),
        row("chuck:x", "a", 0, 1.1),  # one catastrophe on a
        row("chuck:x", "b", 0, 50.0, family="g"),  # bad, but the peer failed there too: no catastrophe
    ]
    s = summarize_arms(rows, ["chuck:x", "prodigy"])["chuck:x"]
    assert s.catastrophes == 1 and s.worst_regret == 50.0
    assert s.per_family["f"].catastrophes == 1 and s.per_family["g"].catastrophes == 0
    assert s.per_family["g"].worst_regret == 50.0
    alone = summarize_arms([r for r in rows if r["arm"] != "prodigy"], ["chuck:x"])["chuck:x"]
    assert alone.catastrophes is None  # without a peer run there is nothing to judge against


# -- base optimizers -------------------------------------------------------------------------------


@pytest.mark.parametrize(("base", "nesterov"), [("SGD", False), ("NesterovSGD", True)])
def test_a_base_optimizer_is_what_the_adamw_and_chuck_arms_train(tiny_tasks, monkeypatch, base, nesterov):
    from chuck.evaluation import runs

    built = {}
    make_arm = runs._make_arm

    def spy(spec, inst):
        opt, scheduler = make_arm(spec, inst)
        built[spec.arm] = opt
        return opt, scheduler

    monkeypatch.setattr(runs, "_make_arm", spy)
    for arm in ("adamw", "chuck:heuristic"):
        res = run_one(RunSpec("test.tiny_a", 0, arm, 1e-2, 20, policy="heuristic", base=base))
        assert res["error"] == "" and math.isfinite(res["final_loss"]), (arm, res)
    wrapped = built["chuck:heuristic"]
    assert isinstance(wrapped, chuck.ChuckOptimizer)
    for opt in (built["adamw"], wrapped.optimizer):
        assert type(opt) is torch.optim.SGD and opt.param_groups[0]["nesterov"] is nesterov
    # the default stays AdamW, and an lr-free baseline keeps its own optimizer on any base
    run_one(RunSpec("test.tiny_a", 0, "adamw", 1e-2, 20))
    assert type(built["adamw"]) is torch.optim.AdamW
    run_one(RunSpec("test.tiny_a", 0, "prodigy", 1e-2, 20, base=base))
    assert type(built["prodigy"]).__name__ == "Prodigy"


def test_each_base_optimizer_is_its_own_instances_with_its_own_oracle_and_figures(tiny_tasks, tmp_path, count_runs):
    from chuck.core.home import chuck_home

    out = tmp_path / "eval"
    s = _small(out, base_optimizers="AdamW,sgd")  # names match case-insensitively
    assert s.settings["base_optimizers"] == ["AdamW", "SGD"]
    # explicit lrs are used as given for every base
    assert s.settings["grids"] == {b: {"lrs": [1e-3], "oracle_lrs": ORACLE} for b in ("AdamW", "SGD")}
    # every run of an SGD instance is built on SGD (the lr-free Prodigy carries it and ignores it)
    assert {spec.base for spec in count_runs} == {"AdamW", "SGD"}
    assert {spec.arm for spec in count_runs if spec.base == "SGD"} >= {"chuck:heuristic", "adamw", "cosine", "prodigy"}
    # one oracle cache per base: the key holds the config with its optimizer
    caches = [json.loads(p.read_text()) for p in (chuck_home() / "oracle").glob("*.json")]
    assert sorted(c["key"]["config"]["optimizer"] for c in caches) == ["AdamW", "SGD"]
    assert all(len(c["runs"]) == N_ORACLE for c in caches)
    rows = _rows(out / "rows.csv")
    assert {r["base"] for r in rows} == {"AdamW", "SGD"}
    assert len({r["key"] for r in rows}) == len(rows)
    oracle = {r["base"]: r["oracle_loss"] for r in rows}
    assert oracle["AdamW"] != oracle["SGD"]  # two sweeps, two oracles
    # pooled figures over both bases, and each base's own
    assert list(s.by_base) == ["AdamW", "SGD"]
    for arm in ("chuck:heuristic", "adamw", "prodigy"):
        assert s.arms[arm].runs == 2 and [s.by_base[b][arm].runs for b in s.by_base] == [1, 1]
        regrets = sorted(float(r["regret"]) for r in rows if r["arm"] == arm and r["kind"] == "main")
        assert sorted(s.by_base[b][arm].median_regret for b in s.by_base) == regrets
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["by_base"]) == {"AdamW", "SGD"} and summary["settings"]["base_optimizers"] == ["AdamW", "SGD"]
    assert set(summary["by_base"]["SGD"]["adamw"]) >= {"median_regret", "geo_regret", "within_10pct", "per_family"}
    md = (out / "summary.md").read_text()
    assert "**AdamW** (starting lrs 0.001" in md and "**SGD** (starting lrs 0.001" in md
    # resuming finds every row of both bases; AdamW alone resumes AdamW's rows only, with its keys as before
    count_runs.clear()
    assert _small(out, base_optimizers=["AdamW", "SGD"]).executed == 0 and not count_runs
    alone = _small(out)
    assert alone.executed == 0 and list(alone.by_base) == ["AdamW"] and alone.arms["adamw"].runs == 1
    assert alone.to_dict()["by_base"]["AdamW"] == alone.to_dict()["arms"]
    assert "**AdamW**" not in (out / "summary.md").read_text()  # one base: the headline table is its table


@pytest.mark.parametrize("bases", ["Lion", "AdamW,lion", ""])
def test_an_unknown_base_optimizer_fails_before_any_run(tiny_tasks, tmp_path, capsys, count_runs, bases):
    out = tmp_path / "eval"
    with pytest.raises(EvaluationInputError, match="base optimizer") as err:
        _small(out, base_optimizers=bases)
    assert "SGD" in str(err.value)  # the choices are named
    argv = ["evaluate", "--policies", "heuristic", "--baselines", "adamw", "--tasks", "test.tiny_a", "--seeds", "0"]
    assert main([*argv, "--base-optimizer", bases, "--out", str(out), "--no-mlflow", "--no-progress"]) == 2
    assert "base optimizer" in capsys.readouterr().err
    assert count_runs == [] and not out.exists()


def test_default_lr_grids_shift_a_decade_up_for_sgd_and_adafactor_only(tiny_tasks, tmp_path):
    from chuck.evaluation import DEFAULT_LRS
    from chuck.evaluation.bases import default_grids
    from chuck.evaluation.runner import _check

    assert default_grids("AdamW") == default_grids("Adam") == default_grids("RMSprop") == (DEFAULT_LRS, ORACLE_LRS)
    for base in ("SGD", "NesterovSGD", "Adafactor"):
        lrs, oracle = default_grids(base)
        assert lrs == (1e-3, 1e-2, 1e-1, 1.0)
        assert len(oracle) == len(ORACLE_LRS) and oracle[0] == 1e-4 and oracle[-1] == 1.0
        assert all(math.isclose(b, 10 * a, rel_tol=1e-2) for a, b in zip(ORACLE_LRS, oracle, strict=True))

    def grids(**kw):
        args = ("heuristic", "adamw", "test.tiny_a", kw.get("lrs"), "0", 1, tmp_path / "x", SCALE, True)
        return _check(*args, kw.get("oracle_lrs"), "process", "AdamW,SGD").grids

    assert grids() == {"AdamW": (list(DEFAULT_LRS), ORACLE_LRS), "SGD": ([1e-3, 1e-2, 1e-1, 1.0], default_grids("SGD")[1])}
    given = grids(lrs="0.05", oracle_lrs=[0.1, 0.01])  # explicit grids: as given for every base (sorted)
    assert given == {"AdamW": ([0.05], (0.01, 0.1)), "SGD": ([0.05], (0.01, 0.1))}


def test_a_rows_file_from_before_the_base_column_is_resumed_as_adamw(tiny_tasks, tmp_path, count_runs):
    from chuck.evaluation.schedule import LEGACY_ROW_FIELDS

    out = tmp_path / "eval"
    first = _small(out)
    rows = _rows(out / "rows.csv")
    with open(out / "rows.csv", "w", newline="") as f:  # as an older version wrote it
        w = csv.DictWriter(f, fieldnames=LEGACY_ROW_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    count_runs.clear()
    again = _small(out)
    assert not count_runs and again.to_dict()["arms"] == first.to_dict()["arms"]
    assert _rows(out / "rows.csv") == rows  # upgraded: the base column back, every row AdamW's


def test_cli_base_optimizers_in_summary_aa_control_and_mlflow(tiny_tasks, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["evaluate", "--policies", "heuristic", "--baselines", "adamw", "--tasks", "test.tiny_a", "--lrs", "1e-3"]
    argv += ["--seeds", "0", "--budget-scale", str(SCALE), "--oracle-lrs", ",".join(map(str, ORACLE))]
    assert main([*argv, "--base-optimizer", "AdamW,SGD", "--aa-control", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "**SGD**" in printed and "harm beyond the A/A" in printed
    summary = json.loads((out / "summary.json").read_text())
    aa = summary["aa_control"]
    assert aa["instances"] == 2 and set(aa["by_base"]) == {"AdamW", "SGD"}
    assert [aa["by_base"][b]["instances"] for b in ("AdamW", "SGD")] == [1, 1]
    replays = json.loads((out / "aa_replays.json").read_text())
    assert sorted({r["base"] for r in replays}) == ["AdamW", "SGD"]
    for base, arms in summary["by_base"].items():
        assert arms["adamw"]["harm_beyond_aa"] == 0.0, base  # the base at the tuned lr is its own reference
        assert arms["chuck:heuristic"]["harm_beyond_aa"] is not None

    import mlflow

    from chuck.tracking.store import default_tracking_uri

    run = mlflow.MlflowClient(default_tracking_uri()).get_run(summary["mlflow_run_id"])
    assert run.data.params["base_optimizers"] == "AdamW,SGD" and run.data.tags["base_optimizers"] == "AdamW,SGD"
    sgd = summary["by_base"]["SGD"]["chuck:heuristic"]["median_regret"]
    assert math.isclose(run.data.metrics["by_base.SGD.chuck:heuristic.median_regret"], sgd)
    pooled = summary["arms"]["chuck:heuristic"]["median_regret"]
    assert math.isclose(run.data.metrics["chuck:heuristic.median_regret"], pooled)
