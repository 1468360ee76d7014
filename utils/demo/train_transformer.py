"""Train ``demo_transformer`` (:mod:`models.demo_transformer`) on synthetic clips, on the CPU,
deterministically, like the other demo models (:mod:`utils.demo.train`)::

    python -m utils.demo.train_transformer --threads 1

Training clips are generated in memory, fresh for every step (seed 0, half of them partial),
batches of 16, AdamW with a one-cycle learning rate; held-out accuracy is measured on clips of
another seed. The convolutional tubelet embedding starts from the bundled ``demo_3dcnn``
checkpoint's ``features`` (same layers; ``--stem_from none`` trains it from scratch): from
scratch, the class token's attention starts out as a near-uniform average over the 1568
tokens, and the loss stayed at chance for the first 85 steps on the CPU budget. Writes ``models/checkpoints/demo_transformer.pt`` (state dict, command, settings,
held-out scores, training time).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from utils.demo.synthetic import SyntheticConfig, generate_arrays

from models.demo import checkpoint_path as demo_checkpoint_path
from models.demo_transformer import NAME, build_demo_transformer, checkpoint_path
from utils.demo.train import (HELDOUT_SEED, TRAIN_CONFIG, TRAIN_SEED, TrainSettings, clips_to_input,
                         heldout_scores)

DEFAULT_SETTINGS = TrainSettings(steps=200, lr=1e-3)
DEMO_3DCNN_CHECKPOINT = demo_checkpoint_path("demo_3dcnn")


def train(settings: TrainSettings = DEFAULT_SETTINGS, seed: int = TRAIN_SEED,
          config: SyntheticConfig = TRAIN_CONFIG, progress: bool = False,
          stem_from: Optional[Path] = None) -> nn.Module:
    """Train the demo transformer (the stem from ``stem_from``, a demo_3dcnn checkpoint, or from
    scratch); returns it in eval mode."""
    torch.manual_seed(seed)
    model = build_demo_transformer()
    if stem_from is not None:
        payload = torch.load(stem_from, map_location="cpu", weights_only=True)
        state = payload.get("state_dict", payload)
        stem = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        model.stem.load_state_dict(stem)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr,
                                                    total_steps=settings.steps, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss()
    steps = range(settings.steps)
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc=NAME, unit="step")
    model.train()
    running = None
    for step in steps:
        batch = generate_arrays(settings.batch_size, seed, config, start=step * settings.batch_size)
        loss = loss_fn(model(clips_to_input(batch["frames"])), torch.from_numpy(batch["labels"]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if progress:
            steps.set_postfix(loss=f"{running:.3f}")
    return model.eval()


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m utils.demo.train_transformer",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="override the step count")
    parser.add_argument("--seed", type=int, default=TRAIN_SEED)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (results depend on it)")
    parser.add_argument("--num_heldout", type=int, default=512)
    parser.add_argument("--out", type=Path, default=None, help=f"checkpoint (default {checkpoint_path()})")
    parser.add_argument("--stem_from", default=str(DEMO_3DCNN_CHECKPOINT),
                        help="demo_3dcnn checkpoint whose features start the stem, or 'none'")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    settings = DEFAULT_SETTINGS if args.steps is None else replace(DEFAULT_SETTINGS, steps=args.steps)
    started, started_cpu = time.perf_counter(), time.process_time()
    stem_from = None if args.stem_from == "none" else Path(args.stem_from)
    model = train(settings, args.seed, progress=args.progress, stem_from=stem_from)
    train_seconds = time.perf_counter() - started
    # CPU time of this process: the wall time depends on what else runs on the machine.
    train_cpu_seconds = time.process_time() - started_cpu
    scores = heldout_scores(model, "classification", args.num_heldout)
    out = args.out or checkpoint_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    command = f"python -m utils.demo.train_transformer --seed {args.seed} --threads {args.threads}"
    if args.steps is not None:
        command += f" --steps {args.steps}"
    if stem_from is None:
        command += " --stem_from none"
    elif stem_from != DEMO_3DCNN_CHECKPOINT:
        command += f" --stem_from {stem_from}"
    from utils.io.atomic import atomic_path
    with atomic_path(out) as tmp:
        torch.save({
            "state_dict": model.state_dict(), "model": NAME, "command": command,
            "settings": asdict(settings), "data": asdict(TRAIN_CONFIG), "train_seed": args.seed,
            "heldout_seed": HELDOUT_SEED, "heldout": scores,
            "stem_from": None if stem_from is None else stem_from.name,
            "train_seconds": round(train_seconds, 1),
            "train_cpu_seconds": round(train_cpu_seconds, 1), "torch_version": str(torch.__version__),
        }, tmp)
    params = sum(p.numel() for p in model.parameters())
    shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in scores.items())
    print(f"{NAME}: {params} parameters, trained in {train_seconds:.0f} s "
          f"({train_cpu_seconds:.0f} s CPU); held-out {shown}; "
          f"saved {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
