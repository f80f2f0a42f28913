"""Recipe of the shipped default policy (chuck/policies/artifacts/default).

    python experiments/train_default_policy.py            # trains (resumable), then installs the artifact
    python experiments/train_default_policy.py --install-only   # copy an existing runs/default/artifact

Trains PPO over the zoo's "train" split with the settings below, evaluates on the
held-out families during training, logs everything to MLflow (local SQLite by
default), and copies the exported artifact into the package. Interrupt it and
run it again: it resumes from runs/default/checkpoint.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from chuck.metatrain import MetaTrainConfig, train_policy

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "policies" / "artifacts" / "default"

CONFIG = MetaTrainConfig(
    tasks="train",
    eval_tasks="heldout",
    # 12k decisions, not more: continuing the same run to 24k made the held-out return fall
    # (1.63 at 12k, 1.37 at 16k, 1.15 at 20k, 1.06 at 24k; holding still scores 0.87), see
    # docs/results/default_training_curve.csv. This is early stopping read off the held-out
    # families, so they are not entirely untouched by model selection (docs/results.md says so).
    timesteps=12_000,
    seed=0,
    n_envs=2,
    interval=20,
    output=str(ROOT / "runs" / "default"),
    name="chuck-default",
    alias="champion",
    eval_every=4_000,
    eval_episodes=8,
    checkpoint_every=2_000,
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
    args = ap.parse_args()
    if not args.install_only:
        CONFIG.timesteps = args.timesteps
        result = train_policy(CONFIG)
        print(f"held-out evaluations: {result.evaluations}")
    install(Path(CONFIG.output) / "artifact")


if __name__ == "__main__":
    main()
