"""Recipe of the shipped default policy (chuck/policies/artifacts/default).

    python experiments/train_default_policy.py                  # trains (resumable); installs nothing
    python experiments/train_default_policy.py --timesteps 40000  # stop earlier (resume later with a larger number)
    python experiments/train_default_policy.py --install-only --snapshot DIR  # install a snapshot that won

Training never replaces the shipped default by itself: a snapshot replaces it only after it
beats the current default on the validation split (`chuck evaluate --policies
default,DIR --tasks validation --seeds 0,1,2`), and is installed with --install-only.

PPO learns a residual on the built-in prior (chuck.policies.prior, version 3) over the
zoo's "train" families, with a periodic evaluation on the "validation" families; every
evaluated policy is kept under experiments/runs/default-v3/snapshots/ so that checkpoint
selection can compare them with `chuck evaluate --tasks validation` on many instances. The
"test" families are used only to report. Checkpoints (experiments/runs/default-v3/checkpoint)
are committed with the repository: rerun the command, in this session or a later one, and
training resumes where it stopped.

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
OUTPUT = ROOT / "experiments" / "runs" / "default-v3"  # default-v2: the first 5,120 decisions, on prior@1

CONFIG = MetaTrainConfig(
    tasks="train",
    eval_tasks="validation",
    timesteps=200_000,  # the policy issue's budget for the shipped default
    seed=0,
    n_envs=2,
    interval=20,
    prior="prior@3",
    output=str(OUTPUT),
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
    ap.add_argument("--install-only", action="store_true")
    ap.add_argument("--timesteps", type=int, default=CONFIG.timesteps)
    ap.add_argument("--snapshot", help="with --install-only: the snapshot directory to install (default: the final artifact)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    if not args.install_only:
        CONFIG.timesteps = args.timesteps
        CONFIG.progress = not args.no_progress
        result = train_policy(CONFIG)
        print(f"validation evaluations: {result.evaluations}")
        print(f"snapshots in {OUTPUT / 'snapshots'}: compare them with the default on validation before installing one")
        return
    install(Path(args.snapshot) if args.snapshot else OUTPUT / "artifact")


if __name__ == "__main__":
    main()
