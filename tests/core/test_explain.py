"""Decisions in words: what changed, and the features that pushed it with their values, usual ranges and signs;
the same words in the decision record, its str/repr and the run summary."""

from __future__ import annotations

import math

import numpy as np
import torch

import chuck
from chuck.core.explain import describe_feature, explain_action, summarize_decisions, what_changed
from chuck.core.report import Decision
from chuck.policies.heuristic import HeuristicPolicy
from tests.conftest import make_net, run_steps

BEFORE = {"lr": 1e-5, "weight_decay": 0.01, "clip": math.inf, "dropout": 0.0}


def test_one_learned_decision_reads_as_change_then_measurements_with_values_ranges_and_signs() -> None:
    after = {**BEFORE, "lr": 2e-5}
    attribution = {"lr": {"weights.update_ratio_log10": 0.41, "loss.log_slope": 0.22, "grad.snr": -0.05}}
    obs = {"weights.update_ratio_log10": -4.6, "loss.log_slope": -0.03, "grad.snr": 0.3}
    words = explain_action(("lr", "weight_decay", "clip", "dropout"), BEFORE, after, attribution, obs)
    assert words == "lr x2: update ratio 2.5e-5, below its usual 1e-4 to 1e-1 (+0.41); loss falling 3% per 100 steps (+0.22)"


def test_the_strongest_push_the_policy_overrode_is_named() -> None:
    after = {**BEFORE, "lr": 3e-5}
    attribution = {"lr": {"loss.noise_to_progress": -0.5, "step.hypergrad": 0.3}}
    obs = {"loss.noise_to_progress": 0.97, "step.hypergrad": 0.3}
    words = explain_action(("lr",), BEFORE, after, attribution, obs)
    assert words.startswith("lr x3: new gradients point along the last step (cosine +0.30)")
    assert "held back by noise 97% of noise+progress (usually under 80%) (-0.50)" in words


def test_rules_and_clipping_and_unmoved_dimensions() -> None:
    after = {**BEFORE, "clip": 1.5}
    attribution = {"clip": {"grad.norm_log_ratio_initial": -1.0}, "dropout": {"loss.overfit_gl": 1.0}}
    obs = {"grad.norm_log_ratio_initial": math.log(40.0), "loss.overfit_gl": 0.1}
    words = explain_action(("lr", "weight_decay", "clip", "dropout"), BEFORE, after, attribution, obs)
    # a rule reads without a weight; dropout was asked to move but the model has none: not mentioned
    assert words == "clipping on at 1.5: gradient norm x40 its early median (usually under x10)"
    assert what_changed("clip", {"clip": 1.5}, {"clip": math.inf}) == "clipping off"
    assert what_changed("lr", {"lr": 1e-3}, {"lr": 1.004e-3}) is None  # within 1%: held


def test_feature_values_against_their_usual_range() -> None:
    assert describe_feature("weights.update_ratio_log10", -3.1) == "update ratio 0.00079"
    assert describe_feature("weights.update_ratio_log10", -0.5) == "update ratio 0.32, above its usual 1e-4 to 1e-1"
    assert describe_feature("ctrl.log_lr_mult", math.log(28.0), (-2.1, 3.1)).endswith("(usually x0.122..x22 in training)")
    assert describe_feature("loss.has_val", 0.0, (1.0, 1.0)) == "no validation loss yet"  # a flag has no range


def test_decisions_carry_the_words_and_print_readably() -> None:
    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-5), "heuristic", model=model, interval=5, history=False
    )
    run_steps(model, opt, 0, 30)
    raised = [d for d in opt.decisions if d.reason.startswith("lr x")]
    assert raised, [d.reason for d in opt.decisions]
    d = raised[0]
    assert "update ratio " in d.reason and "below its usual 1e-4 to 1e-1" in d.reason
    text, rep = str(d), repr(d)
    assert text.startswith(f"step {d.step} [policy] lr x") and "-> lr " in text
    assert d.reason in rep and "observation" not in rep and len(rep) < 400  # not 40 raw floats
    lines = summarize_decisions(list(opt.decisions), {"lr": 1e-5, "weight_decay": 0.01, "clip": math.inf})
    n = len(raised)
    assert lines[0].startswith(f"raised the lr {'once' if n == 1 else 'twice' if n == 2 else f'{n} times'}")
    assert "update ratio" in lines[0]


def test_fallbacks_are_explained() -> None:
    d = Decision(
        step=40,
        source="fallback",
        action=[1, 0, 0, 0],
        observation={},
        hyperparameters={"lr": 2e-5},
        reason="out of distribution (loss.has_val): no validation loss yet; the heuristic decided: lr x2: ...",
    )
    lines = summarize_decisions([d], {"lr": 1e-5})
    assert any("a fallback" in line and "loss.has_val" in line and "heuristic" in line for line in lines)


def test_dropout_changes_read_at_three_digits_and_nudges_read_as_held() -> None:
    assert what_changed("dropout", {"dropout": 0.0312}, {"dropout": 0.0301}) == "dropout 0.0312 -> 0.0301"
    assert what_changed("dropout", {"dropout": 0.1}, {"dropout": 0.1005}) is None  # within 1%: held
    assert what_changed("dropout", {"dropout": 0.0}, {"dropout": 0.05}) == "dropout 0 -> 0.05"
    assert what_changed("clip", {}, {"lr": 1e-3}) is None  # a decision that records no clip did not change it


def test_a_run_summary_names_the_strongest_input_at_its_median() -> None:
    def decision(step: int, lr: float, ratio: float) -> Decision:
        return Decision(
            step=step,
            source="policy",
            action=[1, 0, 0, 0],
            observation={"weights.update_ratio_log10": ratio, "ctrl.has_dropout": 1.0},
            hyperparameters={"lr": lr},
            reason="",
            attribution={"lr": {"weights.update_ratio_log10": 0.5, "ctrl.has_dropout": 0.1}},
        )

    ratios = [-4.6, -4.2, -3.8]
    decisions = [decision(20 * (i + 1), 1e-5 * 2 ** (i + 1), r) for i, r in enumerate(ratios)]
    (line,) = summarize_decisions(decisions, {"lr": 1e-5})
    assert line.startswith("raised the lr 3 times (x2 each, reaching 8e-05; steps 20-60)")
    assert line.endswith(
        "; strongest input (median over those decisions): " + describe_feature("weights.update_ratio_log10", -4.2)
    )
    flag = [
        Decision(
            step=20 * (i + 1),
            source="policy",
            action=[1, 0, 0, 0],
            observation={"ctrl.has_dropout": 1.0},
            hyperparameters={"lr": 1e-5 * 2 ** (i + 1)},
            reason="",
            attribution={"lr": {"ctrl.has_dropout": 0.3}},
        )
        for i in range(3)
    ]
    (line,) = summarize_decisions(flag, {"lr": 1e-5})
    assert "strongest input" not in line and "dropout" not in line, line  # a fact of the model is no reason


def test_facts_of_the_run_are_never_the_reason_yet_stay_in_the_attribution() -> None:
    """The model having dropout pushed weight decay hardest: the words name the measurement next in line."""
    before = {**BEFORE, "weight_decay": 0.01}
    after = {**before, "weight_decay": 0.02}
    attribution = {"weight_decay": {"ctrl.has_dropout": 0.9, "ctrl.has_total": 0.5, "loss.gen_gap": 0.3}}
    obs = {"ctrl.has_dropout": 1.0, "ctrl.has_total": 1.0, "loss.gen_gap": math.log(2.5)}
    words = explain_action(("weight_decay",), before, after, attribution, obs)
    assert words == "wd x2: validation loss 2.50x the training loss (usually under 2x) (+0.30)"
    d = Decision(20, "policy", [0, 1, 0, 0], obs, after, words, attribution)
    assert d.top_features("weight_decay")[0] == ("ctrl.has_dropout", 0.9)  # the full attribution is kept


def test_features_unchanged_over_the_run_are_left_out_of_the_reasons() -> None:
    attribution = {"lr": {"grad.norm_cv": 0.8, "loss.log_slope": 0.2}}
    obs = {"grad.norm_cv": 0.25, "loss.log_slope": -0.5}
    words = explain_action(("lr",), BEFORE, {**BEFORE, "lr": 2e-5}, attribution, obs, constant={"grad.norm_cv"})
    assert words == "lr x2: loss falling 39% per 100 steps (+0.20)"


class _ConstantPusher(HeuristicPolicy):
    """Raises the lr a little at every decision and credits a feature that never moves."""

    def act(self, obs):
        return np.array([0.2, 0.0, 0.0, 0.0])

    def explain(self, obs):
        return {"lr": {"ctrl.log_wd_mult": 0.9, "loss.log_ratio_initial": -0.1, "grad.norm_cv": 0.3}}


def test_a_run_names_no_constant_once_it_has_shown_itself_constant() -> None:
    model = make_net()
    policy = _ConstantPusher()
    opt = chuck.ChuckOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-4), policy, model=model, interval=5, history=False)
    run_steps(model, opt, 0, 30)
    decided = [d for d in opt.decisions if d.source == "policy"]
    assert len(decided) >= 4
    assert all(d.observation["ctrl.log_wd_mult"] == 0.0 for d in decided)  # chuck never moved weight decay
    assert "weight-decay multiplier" in decided[0].reason  # two readings are no evidence of a constant
    for d in decided[2:]:
        assert "weight-decay multiplier" not in d.reason and "gradient norm varies" in d.reason, d.reason
        assert d.attribution["lr"]["ctrl.log_wd_mult"] == 0.9


def test_numbers_read_in_human_units() -> None:
    assert describe_feature("loss.plateau", 0.0, steps_per_window=200) == "0 steps without a 1% improvement"
    assert describe_feature("loss.plateau", 0.6, steps_per_window=200) == (
        "120 steps without a 1% improvement (usually under 100)"
    )
    assert describe_feature("loss.plateau", 0.25) == "0.25 loss windows without a 1% improvement"
    assert describe_feature("grad.log10_abs_median", math.log10(1.3e-9)) == "median |gradient| 1.3e-9"
    assert describe_feature("grad.log10_abs_median", -15.9) == "median |gradient| about zero"
    assert describe_feature("weights.update_ratio_log10", -9.5).startswith("update ratio about zero")
    assert describe_feature("weights.update_ratio_log10", math.log10(2e-3)) == "update ratio 0.002"


def test_a_decision_counts_plateau_steps_with_the_runs_own_window() -> None:
    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-4), _ConstantPusher(), model=model, interval=5, history=False
    )
    opt.controller.policy.explain = lambda obs: {"lr": {"loss.plateau": 0.5}}  # type: ignore[method-assign]
    run_steps(model, opt, 0, 10)
    reason = opt.decisions[-1].reason
    window = opt.monitors["loss"].window
    plateau = round(opt.decisions[-1].observation["loss.plateau"] * window)
    assert f"lr x1.25: {plateau} step" in reason and "without a 1% improvement" in reason and "windows" not in reason, reason
