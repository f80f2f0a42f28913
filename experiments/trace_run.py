"""Trace one `chuck evaluate` run: every decision and guardrail intervention, with the features behind it.

The same instance, starting lr and loop as `chuck evaluate` (AdamW base unless --base names another, ``total_steps`` known, a
validation loss observed every 20 steps), under one policy; prints the validation curve and, per
decision, the lr it left, the lr action, a few features and the policy's reason. What docs/results.md
says about single runs (why the prior halves a ResNet at near-zero losses, why the residual lowers a
transformer on its plateau) comes from here.

    python experiments/trace_run.py cv.textures_resnet 4 0.1 prior@10
    python experiments/trace_run.py nlp.brackets_transformer 4 3.16e-4 default --no-observe
"""

from __future__ import annotations

import argparse

import torch

import chuck
from chuck.evaluation.runs import EVAL_EVERY, instance_config, steps_for
from chuck.zoo import get_task, loop

#: Features printed per decision (any observation key may be added with --feature).
FEATURES = ("step.hypergrad", "loss.overfit_gl", "loss.gen_gap", "loss.log_ratio_initial", "ctrl.skip_rate", "loss.log_slope")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", help="a zoo task id, e.g. cv.textures_resnet")
    ap.add_argument("seed", type=int, help="the instance seed (chuck evaluate's --seeds)")
    ap.add_argument("lr", type=float, help="the starting lr")
    ap.add_argument("policy", help="what chuck.load_policy takes: default, prior@10, an artifact directory")
    ap.add_argument("--base", default="AdamW", help="the base optimizer (chuck.zoo.task.BASE_OPTIMIZERS; default: %(default)s)")
    ap.add_argument("--no-observe", action="store_true", help="do not pass validation losses to chuck")
    ap.add_argument("--feature", action="append", default=[], help="another observation feature to print (repeatable)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    task = get_task(args.task)
    cfg = instance_config(task, args.seed, args.base)
    cfg.lr = args.lr
    torch.manual_seed(cfg.seed)
    inst = task.build(cfg)
    steps = steps_for(task, 1.0)
    opt = chuck.ChuckOptimizer(inst.optimizer, policy=args.policy, model=inst.model, total_steps=steps, history=False)
    res = loop.train(inst, opt, steps, eval_every=EVAL_EVERY, observe=not args.no_observe)
    curve = ", ".join(f"{s}: {v:.3g}" for s, v in zip(res.val_steps, res.val_losses))
    print(f"{args.task} instance {args.seed} from lr {args.lr:g} under {opt.policy_id}: validation loss {curve}")
    keys = (*FEATURES, *args.feature)
    for d in opt.decisions:
        lr = d.hyperparameters.get("lr", float("nan"))
        if d.source == "guardrail":
            print(f"step {d.step:4d}  lr {lr:.3g}  guardrail: {d.reason}")
            continue
        feats = "  ".join(f"{k} {d.observation.get(k, float('nan')):.3g}" for k in keys)
        print(f"step {d.step:4d}  lr {lr:.3g}  lr action {d.action[0]:+.2f}  {feats}  [{d.source}] {d.reason}")


if __name__ == "__main__":
    main()
