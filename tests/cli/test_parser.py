"""The ``chuck`` parser: every option says what it does and its default, and ``chuck --help``
answers without importing torch (it took 3.7 s when the CLI imported it at the top)."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import pytest

import chuck
from chuck.cli.config import DemoConfig, MetaTrainConfig, field_docs
from chuck.cli.main import COMMANDS, build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _loads_torch(code: str) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print('torch' in sys.modules)"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1] == "True"


def test_importing_the_cli_does_not_import_torch() -> None:
    assert not _loads_torch("import chuck.cli.main")
    assert not _loads_torch("import chuck")


@pytest.mark.parametrize("argv", [[], ["tune"], ["ui"], ["history"], ["demo"], ["train-policy"]])
def test_help_does_not_import_torch(argv) -> None:
    code = f"from chuck.cli.main import main\ntry:\n    main({[*argv, '--help']!r})\nexcept SystemExit:\n    pass"
    assert not _loads_torch(code), f"chuck {' '.join(argv)} --help imported torch"


def test_version_answers_without_torch() -> None:
    out = subprocess.run([sys.executable, "-m", "chuck.cli.main", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"chuck {chuck.__version__}"
    code = "from chuck.cli.main import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n    pass"
    assert not _loads_torch(code)


@pytest.mark.parametrize("port", ["-1", "65536", "http"])
def test_ui_refuses_a_port_that_cannot_be_one_before_starting_anything(port, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["ui", "--port", port])
    assert exc.value.code == 2 and "invalid port" in capsys.readouterr().err


def test_chuck_help_lists_every_command() -> None:
    """The console script itself, as a user runs it. Its speed (~0.05 s, against ~2 s for importing
    torch) follows from test_help_does_not_import_torch; no wall-clock bound here, which load flips."""
    out = subprocess.run([sys.executable, "-m", "chuck.cli.main", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and all(name in out.stdout for name in COMMANDS)


def test_every_option_says_what_it_does_and_its_default() -> None:
    subs = _subparsers(build_parser())
    assert set(subs) == set(COMMANDS)
    missing = []
    for name, sub in subs.items():
        assert sub.description, f"chuck {name} has no description"
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = f"chuck {name} {'/'.join(action.option_strings)}"
            text = (action.help or "").lower()
            if not text.strip():
                missing.append(f"{flag}: no description")
            elif not action.required and "default" not in text:
                missing.append(f"{flag}: no default shown")
            elif action.required and "required" not in text:
                missing.append(f"{flag}: required, but the help does not say so")
    assert not missing, "\n".join(missing)


def test_help_shows_the_real_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--trials TRIALS finished trials the study should reach (default: 20)" in text
    assert "--instance-seed" in text and "(default: --seed)" in text
    with pytest.raises(SystemExit):
        main(["ui", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--port PORT port on 127.0.0.1; 0 for a free one (default: 5000)" in text


def test_the_config_module_imports_nothing_heavy() -> None:
    code = "import chuck.cli.config"
    heavy = ("torch", "numpy", "stable_baselines3", "mlflow", "gymnasium", "optuna", "polars")
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print([m for m in {heavy!r} if m in sys.modules])"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]


@pytest.mark.parametrize(("command", "cls"), [("train-policy", MetaTrainConfig), ("demo", DemoConfig)])
def test_every_config_field_is_a_documented_flag(command, cls) -> None:
    """One flag per field, with the field's default, and the field's docstring as its help."""
    sub = _subparsers(build_parser([command]))[command]
    flags = {a.dest: a for a in sub._actions if not isinstance(a, argparse._HelpAction)}
    fields = dataclasses.fields(cls)
    assert set(flags) == {f.name for f in fields}
    docs = field_docs(cls)
    assert set(docs) == {f.name for f in fields}, "every field has a docstring (its flag's help)"
    for f in fields:
        # the default as declared, before __post_init__ derives any
        declared = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        assert flags[f.name].default == declared, f.name
        assert " ".join(docs[f.name].split()[:4]) in " ".join((flags[f.name].help or "").split()), f.name


def test_the_flags_build_the_configs_defaults() -> None:
    """Parsing no flags gives the dataclass's own defaults (``__post_init__`` included)."""
    args = build_parser(["train-policy"]).parse_args(["train-policy"])
    names = {f.name for f in dataclasses.fields(MetaTrainConfig)}
    assert MetaTrainConfig(**{k: v for k, v in vars(args).items() if k in names}) == MetaTrainConfig()


def test_only_the_named_command_is_built() -> None:
    parser = build_parser([])
    assert all(len(sub._actions) == 1 for sub in _subparsers(parser).values()), "--help only"
    with pytest.raises(SystemExit):
        main(["no-such-command"])


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["demo", "--task", "no.such_task"], "chuck demo: error: no task 'no.such_task'"),
        (["demo", "--steps", "0"], "chuck demo: error: steps must be >= 1"),
        (["demo", "--lr", "-1"], "chuck demo: error: lr must be a positive number"),
        (["tune", "--task", "no.such_task"], "chuck tune: error: no task 'no.such_task'"),
        (["tune", "--task", "cv.digits_mlp", "--trials", "0"], "chuck tune: error: --trials must be >= 1"),
        (["tune", "--task", "cv.digits_mlp", "--eps-range", "abc"], "chuck tune: error: --eps-range must be two numbers"),
        (
            ["tune", "--task", "cv.digits_mlp", "--eps-range", "1e-6,1e-10"],
            "chuck tune: error: --eps-range must have 0 < LOW < HIGH",
        ),
    ],
)
def test_bad_settings_are_one_line_errors_before_anything_starts(argv, said, capsys, tmp_path, monkeypatch) -> None:
    """No traceback, exit status 2, and no output, study or MLflow run: the setting is checked first."""
    monkeypatch.setenv("CHUCK_HOME", str(tmp_path))
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith(said) and err.count("\n") == 1 and "Traceback" not in err
    assert out == "" and not any(tmp_path.iterdir())
