"""Recipe of the shipped default policy (chuck/policies/artifacts/default).

    python experiments/train_default_policy.py                  # trains (resumable); installs nothing
    python experiments/train_default_policy.py --timesteps 40000  # stop earlier (resume later with a larger number)
    python experiments/train_default_policy.py --run v3          # resume the earlier run, on prior@3
    python experiments/train_default_policy.py --install-only --snapshot DIR  # install a snapshot that won

Training never replaces the shipped default by itself: a snapshot replaces it only after it
beats the current default on the validation split (`chuck evaluate --policies
default,DIR --tasks validation --seeds 0,1,2`), and is installed with --install-only.

PPO learns a residual on the built-in prior (chuck.policies.prior) over the zoo's "train"
families, with a periodic evaluation on the "validation" families; every evaluated policy is
kept under experiments/runs/default-vN/snapshots/ so that checkpoint selection can compare them
with `chuck evaluate --tasks validation` on many instances. The "test" families are used only to
report. Checkpoints (experiments/runs/default-vN/checkpoint) are committed with the repository:
rerun the command, in this session or a later one, and training resumes where it stopped.

Runs: ``v4`` (the default) learns on prior@10, the shipped default's prior when it started (the
default now ships prior@15, which differs from prior@10 only by not raising steps that are
already large; a snapshot of v4 is compared with the shipped default all the same); ``v3`` on
prior@3 stopped at 103,424 decisions, level with its prior on validation (docs/results.md).

Wall time on this project's machine (2 cores, one env per core, nothing else running): 31,744
decisions in 34 minutes including six validation evaluations, about 16 decisions per second,
i.e. 200k decisions take about 3.5 hours; docs/results.md records what was run.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from chuck.metatrain import MetaTrainConfig, train_policy

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "policies" / "artifacts" / "default"
#: run -> the prior its residual learns on (default-v2: the first 5,120 decisions, on prior@1)
RUNS = {"v3": "prior@3", "v4": "prior@10"}


def config(run: str) -> MetaTrainConfig:
    return MetaTrainConfig(
        tasks="train",
        eval_tasks="validation",
        timesteps=200_000,  # the policy issue's budget for the shipped default
        seed=0,
        n_envs=2,
        interval=20,
        prior=RUNS[run],
        output=str(ROOT / "experiments" / "runs" / f"default-{run}"),
        name="chuck-default",
        alias="champion",
        eval_every=5_000,
        eval_episodes=8,
        checkpoint_every=1_024,
    )


def install(artifact: Path) -> None:
    TARGET.mkdir(parents=True, exist_ok=True)
    for name in ("policy.pt", "policy.json"):
        shutil.copy2(artifact / name, TARGET / name)
    print(f"installed {artifact} -> {TARGET}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", choices=sorted(RUNS), default="v4", help="which run to train or resume (default: %(default)s)")
    ap.add_argument("--install-only", action="store_true")
    ap.add_argument("--timesteps", type=int, default=200_000)
    ap.add_argument("--snapshot", help="with --install-only: the snapshot directory to install (default: the final artifact)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    cfg = config(args.run)
    output = Path(cfg.output)
    if not args.install_only:
        cfg.timesteps = args.timesteps
        cfg.progress = not args.no_progress
        result = train_policy(cfg)
        print(f"validation evaluations: {result.evaluations}")
        print(f"snapshots in {output / 'snapshots'}: compare them with the default on validation before installing one")
        return
    install(Path(args.snapshot) if args.snapshot else output / "artifact")


if __name__ == "__main__":
    main()
