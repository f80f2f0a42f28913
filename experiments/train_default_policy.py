"""Recipe of the shipped default policy (chuck/policies/artifacts/default).

    python experiments/train_default_policy.py                  # trains (resumable); installs nothing
    python experiments/train_default_policy.py --timesteps 40000  # stop earlier (resume later with a larger number)
    python experiments/train_default_policy.py --run v5          # the residual on prior@15 (PPO seed 1)
    python experiments/train_default_policy.py --run v6          # v4's recipe with PPO seed 1 (a replicate)
    python experiments/train_default_policy.py --run v7          # v4's recipe on observation spec v3
    python experiments/train_default_policy.py --run v8          # v4's recipe (spec v2) on v7's zoo

Training never replaces the shipped default by itself: a snapshot replaces it only after it
beats the current default on the validation split, with and without validation losses
(`chuck evaluate --policies default,DIR --tasks validation --seeds 0,1,2,3,4,5`, once more with
`--no-observe`), and is installed with its card by ``experiments/install_default.py --residual keep``.

PPO learns a residual on the built-in prior (chuck.policies.prior) over the zoo's "train"
families, with a periodic evaluation on the "validation" families; every evaluated policy is
kept under experiments/runs/default-vN/snapshots/ so that checkpoint selection can compare them
with `chuck evaluate --tasks validation` on many instances. The "test" families are used only to
report. Checkpoints (experiments/runs/default-vN/checkpoint) make a rerun resume where it stopped;
experiments/runs/ is git-ignored, and the runs committed earlier (v2-v6: checkpoints, snapshots) live
in git history (``git checkout b3d3e5d -- experiments/runs/default-v4``; docs/results/MANIFEST.md).

Runs: ``v4`` (the default run) learns on prior@10 and finished the issue's 200k decisions (200,192);
its final snapshot, ``experiments/runs/default-v4/snapshots/00200192``, is the shipped default, installed
with ``experiments/install_default.py --residual keep`` after it beat prior@15 alone on validation
with and without validation losses (docs/results.md). ``v5`` learns on prior@15 with another PPO seed
(the policy issue's "several training seeds"; ``--run v5``, resumable): stopped at 147,456 decisions,
where it was worse on validation than prior@15 alone and than at 94k (docs/results.md). ``v3`` on
prior@3 stopped at 103,424 decisions, level with its prior on validation. ``v6`` is v4's recipe with
another PPO seed: does v4's gain over its prior replicate, or was it one lucky run? (and, if it
replicates, two runs' corrections to average; ``--run v6``, resumable: 186,368 decisions so far). At
164,752 it was worse than v4 on validation and level with its prior; the v4 + v6 ensemble did not
beat v4 (docs/results.md). ``v7`` is v4's recipe on observation spec v3, which drops the features whose
meaning depends on the base optimizer (the raw lr, the raw gradient scale, the share of coordinates below
Adam's epsilon), over a zoo whose SGD episodes run with and without Nesterov momentum (``--run v7``,
resumable): can the residual's gain carry to SGD, where v4's reads an lr a decade above Adam's as "high"?
Its train split holds plateau families (a sparse parity, long-range memory). It ran to the end; its
checkpoint, snapshots and held-out curve are committed under experiments/runs/default-v7/ (force-added: the
folder is git-ignored). No snapshot beat the default on validation by the rule written down before the late
snapshots were measured (docs/results.md, "An observation that reads the same under every base optimizer"),
so none ships.
``v8`` is v4's recipe, spec v2 included, on v7's zoo (the plateau families in the train split, SGD
episodes with and without Nesterov momentum): v7 changed the spec and the zoo at once, and v8 tells them
apart. If v7's losses on AdamW's ordinary families come from the spec, v8 keeps v4's gains there and adds
v7's on the near-zero-loss families. Its snapshots are chosen by the rule in
docs/results/retrain_v8/RULE.md, written down before any of them was measured
(``experiments/select_snapshots.py experiments/runs/default-v8`` names the candidates once it is done).

Wall time on this project's machine (2 cores, one env per core, nothing else running): 31,744
decisions in 34 minutes including six validation evaluations, about 16 decisions per second,
i.e. 200k decisions take about 3.5 hours; docs/results.md records what was run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NamedTuple

from chuck.metatrain.train import MetaTrainConfig, train_policy

ROOT = Path(__file__).resolve().parents[1]


#: run -> the prior its residual learns on, its PPO seed and the registry alias of its final artifact
#: (default-v2: the first 5,120 decisions, on prior@1)
class Run(NamedTuple):
    prior: str
    seed: int
    alias: str
    observation: str = "2"  # the observation spec its policy reads (chuck.core.observation)


RUNS = {
    "v3": Run("prior@3", seed=0, alias="champion"),
    "v4": Run("prior@10", seed=0, alias="champion"),
    "v5": Run("prior@15", seed=1, alias="challenger"),
    "v6": Run("prior@10", seed=1, alias="replicate"),
    "v7": Run("prior@10", seed=0, alias="challenger", observation="3"),
    "v8": Run("prior@10", seed=0, alias="challenger"),
}


def config(run: str) -> MetaTrainConfig:
    return MetaTrainConfig(
        tasks="train",
        eval_tasks="validation",
        timesteps=200_000,  # the policy issue's budget for the shipped default
        seed=RUNS[run].seed,
        n_envs=2,
        interval=20,
        prior=RUNS[run].prior,
        observation_version=RUNS[run].observation,
        # a prior chuck does not ship (v3's) is registered by the lab module, in every environment worker
        tasks_module=[] if RUNS[run].prior in ("prior@10", "prior@15") else ["experiments.lab_policies"],
        output=str(ROOT / "experiments" / "runs" / f"default-{run}"),
        name="chuck-default",
        alias=RUNS[run].alias,
        eval_every=5_000,
        eval_episodes=8,
        checkpoint_every=1_024,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", choices=sorted(RUNS), default="v4", help="which run to train or resume (default: %(default)s)")
    ap.add_argument("--timesteps", type=int, default=200_000)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    cfg = config(args.run)
    cfg.timesteps = args.timesteps
    cfg.progress = not args.no_progress
    result = train_policy(cfg)
    print(f"validation evaluations: {result.evaluations}")
    print(
        f"snapshots in {Path(cfg.output) / 'snapshots'}: compare them with the default on validation before "
        "installing one with experiments/install_default.py"
    )


if __name__ == "__main__":
    main()
