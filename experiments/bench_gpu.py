"""What chuck costs on an accelerator: per-step overhead, host synchronizations, and one real run.

A GPT-style decoder (``torch.nn.TransformerEncoder`` with a causal mask, pre-norm, learned positions;
about 30M parameters at the defaults) learns a synthetic token stream (an order-1 Markov chain with a
sparse random transition table, so there is something to learn and a loss floor below log(vocab)) under
bf16 autocast. Three measurements, each printed and written to ``--json``:

* **overhead**: rounds of three blocks of ``--block`` steps (a multiple of the decision interval, so each
  block carries its decisions), alternating the order: bare AdamW, the same bare loop on a second copy of
  the model (the A/A control: what two copies of one loop differ by) and
  ``ChuckOptimizer(AdamW, "default", model=...)``. Each block is timed between two
  ``torch.cuda.synchronize()`` calls; the paired ratio is the geometric mean over rounds of the block-mean
  ratios, with a 95% bootstrap interval over rounds (as ``bench_overhead.py``). Target: at most 1.03.
* **host synchronizations per step**: ``torch.cuda.set_sync_debug_mode("warn")`` makes every call that
  waits for the device warn; the warnings are counted over one block of bare steps and one of chuck
  steps. The loop itself reads nothing back (the loss is never printed), so the bare count is the
  loop's own and the difference is chuck's. Target: at most one per step.
* **a real run**: ``--steps`` steps from one initialization under constant AdamW at ``--lr``, chuck's
  default on the same AdamW (``total_steps`` known, the validation loss observed every 100 steps) and
  Prodigy with cosine annealing (prodigyopt, lr 1), each ending with its validation loss.

    python experiments/bench_gpu.py --json docs/results/gpu_h100.json            # on a GPU machine, about 5 minutes
    python experiments/bench_gpu.py --device cpu --tiny --rounds 2 --steps 60     # a smoke test of the script itself

The card that measured it (``torch.cuda.get_device_name``) is in the output.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_overhead import paired_ratio
from torch import nn

import chuck


class Decoder(nn.Module):
    """A pre-norm causal Transformer language model."""

    def __init__(self, vocab: int, width: int, layers: int, heads: int, context: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(context, width))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        h = self.blocks(self.embed(tokens) + self.pos[:t], mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))


class MarkovStream:
    """Batches of one order-1 Markov chain over ``vocab`` tokens, each token followed by one of ``fanout``
    successors (a loss floor of about log(fanout)), drawn on the device. The chain is the same for every
    stream (training and validation); ``seed`` picks the draws from it."""

    def __init__(self, vocab: int, fanout: int, batch: int, context: int, device: torch.device, seed: int) -> None:
        chain = torch.Generator(device="cpu").manual_seed(0)
        self.next = torch.randint(0, vocab, (vocab, fanout), generator=chain).to(device)
        self.vocab, self.fanout, self.batch, self.context, self.device = vocab, fanout, batch, context, device
        self.gen = torch.Generator(device=device).manual_seed(seed + 1)

    def sample(self) -> torch.Tensor:
        picks = torch.randint(0, self.fanout, (self.batch, self.context), generator=self.gen, device=self.device)
        tokens = torch.empty(self.batch, self.context, dtype=torch.long, device=self.device)
        tokens[:, 0] = torch.randint(0, self.vocab, (self.batch,), generator=self.gen, device=self.device)
        for i in range(1, self.context):
            tokens[:, i] = self.next[tokens[:, i - 1], picks[:, i]]
        return tokens


def lm_loss(model: nn.Module, tokens: torch.Tensor, device: torch.device) -> torch.Tensor:
    with torch.autocast(device.type, dtype=torch.bfloat16):
        logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def run_block(
    model: nn.Module, opt, batches: list[torch.Tensor], device: torch.device, wrapped: bool, timed: bool = True
) -> float:
    """Seconds for the block, the device synchronized at both ends only (``timed``; otherwise no
    synchronization of its own, for counting the loop's)."""
    sync = torch.cuda.synchronize if device.type == "cuda" and timed else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for tokens in batches:
        loss = lm_loss(model, tokens, device)
        loss.backward()
        opt.step(loss=loss) if wrapped else opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    return time.perf_counter() - t0


def count_syncs(fn: Callable[[], object]) -> int:
    """How many times ``fn`` made the host wait for the device (CUDA only)."""
    torch.cuda.synchronize()  # nothing pending from before
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def overhead(args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    bare_model = Decoder(args.vocab, args.width, args.layers, args.heads, args.context).to(device)
    control_model, chuck_model = copy.deepcopy(bare_model), copy.deepcopy(bare_model)
    bare = torch.optim.AdamW(bare_model.parameters(), lr=args.lr, fused=device.type == "cuda")
    control = torch.optim.AdamW(control_model.parameters(), lr=args.lr, fused=device.type == "cuda")
    wrapped = chuck.ChuckOptimizer(
        torch.optim.AdamW(chuck_model.parameters(), lr=args.lr, fused=device.type == "cuda"),
        "default",
        model=chuck_model,
        history=False,
    )
    if args.block % wrapped.interval:
        raise SystemExit(f"--block must be a multiple of the decision interval ({wrapped.interval})")
    stream = MarkovStream(args.vocab, 4, args.batch, args.context + 1, device, seed=1)
    batches = [stream.sample() for _ in range(args.block)]
    arms = {"bare": (bare_model, bare, False), "control": (control_model, control, False), "chuck": (chuck_model, wrapped, True)}
    for model, opt, is_chuck in arms.values():
        run_block(model, opt, batches[: wrapped.interval], device, is_chuck)  # warm-up: kernels, allocator, first decision
    pairs: dict[str, list[float]] = {"chuck": [], "control": []}
    seconds: dict[str, list[float]] = {a: [] for a in arms}
    for r in range(args.rounds):
        for arm in list(arms) if r % 2 == 0 else list(reversed(arms)):
            model, opt, is_chuck = arms[arm]
            seconds[arm].append(run_block(model, opt, batches, device, is_chuck))
        for arm in pairs:
            pairs[arm].append(seconds[arm][-1] / seconds["bare"][-1])
    ratio, ci = paired_ratio(pairs["chuck"])
    aa, aa_ci = paired_ratio(pairs["control"])
    out = {
        "params": sum(p.numel() for p in bare_model.parameters()),
        "bare_ms_per_step": round(statistics.median(seconds["bare"]) / args.block * 1e3, 3),
        "chuck_ms_per_step": round(statistics.median(seconds["chuck"]) / args.block * 1e3, 3),
        "ratio_paired_blocks": round(ratio, 4),
        "ratio_paired_blocks_ci95": [round(ci[0], 4), round(ci[1], 4)],
        "control_ratio_paired_blocks": round(aa, 4),
        "control_ratio_paired_blocks_ci95": [round(aa_ci[0], 4), round(aa_ci[1], 4)],
        "target_ratio": 1.03,
    }
    if device.type == "cuda":
        bare_syncs = count_syncs(lambda: run_block(bare_model, bare, batches, device, False, timed=False))
        chuck_syncs = count_syncs(lambda: run_block(chuck_model, wrapped, batches, device, True, timed=False))
        out["host_syncs_per_step"] = {
            "bare": bare_syncs / args.block,
            "chuck": chuck_syncs / args.block,
            "chuck_own": (chuck_syncs - bare_syncs) / args.block,
            "target": 1.0,
        }
    return out


def real_run(args: argparse.Namespace, device: torch.device) -> dict:
    """Final validation loss of constant AdamW, chuck's default on it, and Prodigy + cosine, from one initialization."""
    torch.manual_seed(0)
    init = Decoder(args.vocab, args.width, args.layers, args.heads, args.context).to(device)
    val = MarkovStream(args.vocab, 4, args.batch, args.context + 1, device, seed=7)
    val_batches = [val.sample() for _ in range(4)]

    def validate(model: nn.Module) -> float:
        with torch.no_grad():
            return float(torch.stack([lm_loss(model, b, device) for b in val_batches]).mean())

    def train(arm: str) -> float:
        model = copy.deepcopy(init)
        scheduler = None
        if arm == "prodigy":
            from prodigyopt import Prodigy

            opt = Prodigy(model.parameters(), lr=1.0, weight_decay=0.01)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=args.lr, fused=device.type == "cuda")
        if arm == "chuck":
            opt = chuck.ChuckOptimizer(opt, "default", model=model, total_steps=args.steps, history=False)
        stream = MarkovStream(args.vocab, 4, args.batch, args.context + 1, device, seed=1)
        for step in range(args.steps):
            loss = lm_loss(model, stream.sample(), device)
            loss.backward()
            opt.step(loss=loss) if arm == "chuck" else opt.step()
            opt.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            if arm == "chuck" and (step + 1) % 100 == 0:
                opt.observe(val_loss=validate(model))
        return validate(model)

    out = {arm: round(train(arm), 5) for arm in ("adamw", "chuck", "prodigy")}
    out["floor"] = round(math.log(4), 5)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a model small enough to smoke-test the script on a CPU")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--block", type=int, default=40, help="steps per timed block (a multiple of the decision interval)")
    ap.add_argument("--steps", type=int, default=1500, help="steps of the real run (0: skip it)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    width, layers, heads, vocab, context, batch = (64, 2, 4, 256, 32, 8) if args.tiny else (512, 8, 8, 8192, 256, 32)
    args.width, args.layers, args.heads, args.vocab, args.context, args.batch = width, layers, heads, vocab, context, batch
    device = torch.device(args.device)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "model": {"width": width, "layers": layers, "heads": heads, "vocab": vocab, "context": context, "batch": batch},
        "overhead": overhead(args, device),
    }
    print(json.dumps(result["overhead"], indent=1), flush=True)
    if args.steps:
        result["real_run"] = real_run(args, device)
        print(json.dumps(result["real_run"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
