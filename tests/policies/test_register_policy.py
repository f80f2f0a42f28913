"""Policies registered by name (chuck.policies.register_policy): loaded like built-ins, in every process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import chuck
from chuck.core.loading import is_builtin
from chuck.policies import register_policy, unregister_policy
from chuck.policies.learned import LearnedPolicy


class _Annealing(chuck.Policy):
    name, version, warmup, anneal = "annealing", "1", 5, 0.3

    def __init__(self, observation_version: str | None = None) -> None:
        if observation_version is not None:
            self.observation_version = observation_version

    def act(self, observation):
        self.check_observation(observation)
        return np.zeros(4, dtype=np.float32)


@pytest.fixture
def annealing():
    register_policy("test.annealing", _Annealing)
    yield "test.annealing"
    unregister_policy("test.annealing")


def test_a_registered_name_loads_like_a_builtin(annealing) -> None:
    a, b = chuck.load_policy(annealing), chuck.load_policy(annealing)
    assert isinstance(a, _Annealing) and a is not b, "a new policy each time: a policy holds one run's state"
    assert is_builtin(annealing), "chuck evaluate takes it as a name, not a path"
    with pytest.raises(ValueError, match="registered already"):
        register_policy(annealing, _Annealing)
    register_policy(annealing, _Annealing, replace=True)
    unregister_policy(annealing)
    with pytest.raises(chuck.PolicyLoadError, match="unknown policy"):
        chuck.load_policy(annealing)


@pytest.mark.parametrize("name", ["default", "constant", "heuristic", "prior", "prior@10", "prior@15", "models:/x@y", ""])
def test_names_chuck_resolves_itself_cannot_be_registered(name: str) -> None:
    with pytest.raises(ValueError):
        register_policy(name, _Annealing)


def test_a_factory_that_builds_no_policy_is_refused() -> None:
    register_policy("test.not_a_policy", object)  # type: ignore[arg-type]
    try:
        with pytest.raises(chuck.PolicyLoadError, match="not a chuck Policy"):
            chuck.load_policy("test.not_a_policy")
    finally:
        unregister_policy("test.not_a_policy")


def test_a_registered_policy_can_be_a_residuals_prior(annealing) -> None:
    default = chuck.load_policy("default")
    assert isinstance(default, LearnedPolicy)
    register_policy(annealing, lambda: _Annealing(default.observation_version), replace=True)  # the residual's spec
    on_it = LearnedPolicy(default.actor, {**default.card, "prior": annealing})
    assert isinstance(on_it.prior, _Annealing) and (on_it.warmup, on_it.anneal) == (5, 0.3)
    obs = chuck.ObservationSpec(default.observation_version).space.sample()
    np.testing.assert_array_equal(on_it.act(obs), default.correction(obs))  # the prior holds: the correction alone


def test_a_worker_knows_the_names_its_commands_modules_register(tmp_path) -> None:
    """A process started by a command with --tasks-module (named in $CHUCK_TASKS_MODULES) that meets an
    unknown name imports those modules first, as an evaluation worker that got its tasks by value must."""
    (tmp_path / "my_policies.py").write_text(
        textwrap.dedent("""
            from chuck.policies import register_policy
            from chuck.policies.prior import StepSizePrior

            register_policy("prior@mine", lambda: StepSizePrior(version="10"))
        """)
    )
    env = {**os.environ, "CHUCK_TASKS_MODULES": "my_policies", "PYTHONPATH": str(tmp_path)}
    code = "import chuck; print(chuck.load_policy('prior@mine').id)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "prior@10"


def test_a_residuals_prior_reads_the_residuals_observation_spec_or_is_refused(annealing) -> None:
    """A registered step-size rule follows the residual's spec (it reads its features by name); any other
    policy built for another spec is refused, naming both."""
    import dataclasses

    from chuck.policies.prior import PRIOR_10, StepSizePrior
    from chuck.policies.residual import make_prior

    class Rule(StepSizePrior):
        pass

    config = dataclasses.replace(PRIOR_10, version="rule")
    register_policy("test.rule", lambda: Rule(config=config))
    try:
        moved = make_prior("test.rule", "2")
        assert isinstance(moved, Rule) and moved.observation_version == "2" and moved.config == config
        assert make_prior("test.rule", chuck.ObservationSpec().version).observation_version == chuck.ObservationSpec().version
    finally:
        unregister_policy("test.rule")
    with pytest.raises(ValueError, match=rf"reads observation spec v{chuck.ObservationSpec().version}, the residual v2"):
        make_prior(annealing, "2")
