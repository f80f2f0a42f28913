"""Task specs that select nothing are errors, and task modules reach every process.

A registration lives in the process that made it; these tests pin what a user of
``chuck train-policy`` depends on: an empty split, domain or an unknown id stops with a
message that says how to register tasks, and a module named with ``--tasks-module`` (here
:func:`chuck.zoo.import_task_modules`) is imported by a fresh worker process too, so
``chuck evaluate --tasks-module`` runs the task in its worker pool.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from chuck import zoo
from chuck.zoo import registry

#: A module that registers one tiny task when imported, as a user's ``my_pkg/tasks.py`` would.
TASK_MODULE = '''
import math

import torch
import torch.nn.functional as F
from torch import nn

from chuck import zoo


class {cls}(zoo.Task):
    """A 3-class problem on fixed Gaussian data, a one-hidden-layer MLP (milliseconds per step)."""

    id, domain, budget = "{task_id}", "inhouse", 400
    space = zoo.SearchSpace(widths=(16,), depths=(1,), norms=("none",), batch_sizes=(32,), dropouts=(0.0,),
                            weight_decays=(0.0,), optimizers=("AdamW",))

    @property
    def best_lr(self):
        return 1e-2

    def build(self, config):
        g = torch.Generator().manual_seed({data_seed})
        x = torch.randn(256, 8, generator=g)
        y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
        model = nn.Sequential(nn.Linear(8, config.width), nn.Tanh(), nn.Linear(config.width, 3))
        opt = zoo.make_optimizer(config.optimizer, model.parameters(), config.lr, config.weight_decay)
        return zoo.SupervisedInstance(model, opt, config, (x[:192], y[:192]), (x[192:], y[192:]),
                                      F.cross_entropy, math.log(3))


zoo.register_task({cls})
'''


def write_task_module(directory, module: str, tasks: dict[str, str]) -> None:
    """``directory/module.py`` registering one tiny task per ``{class name: task id}``."""
    parts = [TASK_MODULE.format(cls=cls, task_id=task_id, data_seed=i) for i, (cls, task_id) in enumerate(tasks.items())]
    (directory / f"{module}.py").write_text("\n".join(parts))


@pytest.fixture
def task_module(tmp_path, monkeypatch):
    """A task module on ``sys.path``; afterwards its task, its import and ``$CHUCK_TASKS_MODULES`` are undone."""
    write_task_module(tmp_path, "inhouse_tasks_for_test", {"Churn": "inhouse.churn_test"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(registry.MODULES_ENV, "")  # restored (removed) at teardown, whatever the test set
    yield "inhouse_tasks_for_test", tmp_path
    zoo.unregister_task("inhouse.churn_test")
    sys.modules.pop("inhouse_tasks_for_test", None)
    registry._modules_imported.discard("inhouse_tasks_for_test")


def test_a_split_that_selects_nothing_is_an_error_beside_others() -> None:
    assert zoo.list_tasks("custom") == [], "precondition: no user task registered in this process"
    with pytest.raises(zoo.TaskSpecError, match=r"split 'custom' holds no task in this process: .*--tasks-module MODULE"):
        zoo.resolve_tasks("custom,train")  # "train" alone selects 22 tasks: "custom" must not vanish silently
    with pytest.raises(zoo.TaskSpecError, match=r"domain 'audio' holds no task .*domains: \['cv', 'nlp', 'rl', 'tabular'\]"):
        zoo.resolve_tasks(["train", "domain:audio"])
    with pytest.raises(zoo.TaskSpecError, match=r"no task 'tabular.wine_mlpp'.*did you mean 'tabular.wine_mlp'"):
        zoo.resolve_tasks("train,tabular.wine_mlpp")
    assert isinstance(zoo.TaskSpecError("x"), ValueError), "callers that catch ValueError keep working"
    assert [t.id for t in zoo.resolve_tasks("domain:rl,tabular.wine_mlp")][-1] == "tabular.wine_mlp"


def test_a_task_module_is_imported_here_and_in_a_fresh_process(task_module) -> None:
    module, directory = task_module
    assert zoo.import_task_modules(module) == [module]
    assert zoo.list_tasks("custom") == ["inhouse.churn_test"]
    assert [t.id for t in zoo.resolve_tasks("custom")] == ["inhouse.churn_test"]
    assert os.environ[registry.MODULES_ENV] == module, "children inherit the module names"

    # a fresh interpreter, as a spawn/forkserver worker is: it finds the task through the environment
    probe = "from chuck import zoo; print(zoo.resolve_tasks('custom')[0].id)"
    env = {**os.environ, "PYTHONPATH": str(directory), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "inhouse.churn_test", out.stderr[-2000:]

    env.pop(registry.MODULES_ENV)
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "split 'custom' holds no task" in out.stderr, "without it the worker sees nothing"


def test_a_missing_task_module_says_where_it_looked(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(registry.MODULES_ENV, "")
    monkeypatch.setattr(sys, "path", list(sys.path))  # the lookup adds the working directory to sys.path
    monkeypatch.chdir(tmp_path)
    with pytest.raises(zoo.TaskSpecError, match=r"no tasks module 'no_such_tasks_module'.*PYTHONPATH"):
        zoo.import_task_modules("no_such_tasks_module")
    assert os.environ[registry.MODULES_ENV] == "", "a module that failed is not passed on to workers"


def test_a_task_module_in_the_working_directory_is_found_by_the_console_script(tmp_path) -> None:
    """``chuck`` (a console script) has no working directory on sys.path, unlike ``python -m``."""
    write_task_module(tmp_path, "cwd_tasks", {"Local": "inhouse.local_test"})
    script = textwrap.dedent(
        """
        import sys
        sys.path = [p for p in sys.path if p not in ("", ".") and p != __import__("os").getcwd()]
        from chuck import zoo
        zoo.import_task_modules("cwd_tasks")
        print(zoo.resolve_tasks("custom")[0].id)
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", registry.MODULES_ENV)}
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == "inhouse.local_test", out.stderr[-2000:]


@pytest.mark.slow
def test_evaluate_takes_a_tasks_module_and_its_workers_run_the_tasks(tmp_path) -> None:
    """``chuck evaluate --tasks-module``: the module found in the working directory, its task run by two workers."""
    work = tmp_path / "work"
    work.mkdir()
    write_task_module(work, "my_eval_tasks", {"Mine": "inhouse.mine"})
    argv = [
        str(Path(sys.executable).parent / "chuck"),
        "evaluate",
        "--tasks-module", "my_eval_tasks",
        "--tasks", "custom",
        "--policies", "heuristic",
        "--baselines", "adamw",
        "--lrs", "1e-3",
        "--seeds", "0",
        "--budget-scale", "0.1",
        "--oracle-lrs", "1e-3,1e-2,1e-1",
        "--workers", "2",
        "--out", str(tmp_path / "eval"),
        "--no-mlflow",
        "--no-progress",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CHUCK_TASKS_MODULES")}
    env.update(OMP_NUM_THREADS="1", CHUCK_HOME=str(tmp_path / "home"))
    out = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    with open(tmp_path / "eval" / "rows.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["task_id"] for r in rows} == {"inhouse.mine"}
    assert [r["error"] for r in rows if r["error"]] == [], "every run trained the task, none crashed looking it up"

    # without the flag the same command stops at once and says how to register the task
    argv.remove("--tasks-module")
    argv.remove("my_eval_tasks")
    out = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2 and "split 'custom' holds no task in this process" in out.stderr, out.stderr[-2000:]
