"""Train the demo networks of :mod:`models.demo` on synthetic clips, on the CPU, deterministically.

    python -m utils.demo.train --model all          # or demo_3dcnn, demo_lstm, ...

Training clips are generated in memory, fresh for every step (``utils.demo.synthetic`` with the
training seed), so no clip is seen twice; accuracy is then measured on held-out clips drawn
with a different seed. The result is ``models/checkpoints/<name>.pt``: the state dict plus
the command, the settings and the held-out scores. Runs are repeatable for a given number of
threads (``--threads``, default 1).
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from utils.demo.synthetic import SyntheticConfig, generate_arrays

from models.demo import DEMO_3DCNN, build_model, checkpoint_path

TRAIN_SEED = 0
HELDOUT_SEED = 1_000_003
# Half the clips hold the evidence in part of the clip only, so the models learn to find it
# in time as well as in space.
TRAIN_CONFIG = SyntheticConfig(partial_fraction=0.5)


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.0


DEFAULT_SETTINGS = {
    "demo_3dcnn": TrainSettings(steps=300),
    "demo_lstm": TrainSettings(steps=500),
    "demo_lstm_attn": TrainSettings(steps=400),
    "demo_regression": TrainSettings(steps=600),
}
MODEL_NAMES = tuple(DEFAULT_SETTINGS)


def task_of(name: str) -> str:
    return "regression" if name == "demo_regression" else "classification"


def clips_to_input(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames ``(N, T, H, W, 3)`` -> normalised model input ``(N, 3, T, H, W)``."""
    clip = torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float().div_(255.0)
    return DEMO_3DCNN.normalize(clip)          # all demo models share one normalisation


def _batches(num_clips: int, batch_size: int, seed: int, config: SyntheticConfig, start: int = 0):
    for first in range(start, start + num_clips, batch_size):
        count = min(batch_size, start + num_clips - first)
        yield generate_arrays(count, seed, config, start=first)


@torch.no_grad()
def heldout_scores(model: nn.Module, task: str, num_clips: int = 256, seed: int = HELDOUT_SEED,
                   config: SyntheticConfig = TRAIN_CONFIG, batch_size: int = 32) -> dict:
    """Scores on clips ``0 .. num_clips-1`` drawn with ``seed``.

    Classification: ``accuracy``, and ``accuracy_full`` / ``accuracy_partial`` on clips whose
    evidence spans all / part of the clip. Regression: ``rmse`` (root mean squared error per
    velocity component, px/frame), ``velocity_std`` (the targets' standard deviation per
    component, i.e. the RMSE of always predicting the mean) and ``mean_angle_error`` (degrees).
    """
    was_training = model.training
    model.eval()
    try:
        outputs, labels, velocities, partial = [], [], [], []
        for batch in _batches(num_clips, batch_size, seed, config):
            outputs.append(model(clips_to_input(batch["frames"])))
            labels.append(batch["labels"])
            velocities.append(batch["velocities"])
            partial.append(~batch["present"].all(axis=1))
    finally:
        model.train(was_training)
    output = torch.cat(outputs).numpy()
    labels, velocities, partial = map(np.concatenate, (labels, velocities, partial))
    if task == "regression":
        error = output - velocities
        angle_out = np.arctan2(output[:, 1], output[:, 0])
        angle_true = np.arctan2(velocities[:, 1], velocities[:, 0])
        angle_error = np.abs(np.angle(np.exp(1j * (angle_out - angle_true))))
        return {
            "rmse": float(np.sqrt(np.mean(error ** 2))),
            "velocity_std": float(np.sqrt(np.mean((velocities - velocities.mean(0)) ** 2))),
            "mean_angle_error": float(np.degrees(angle_error).mean()),
            "num_clips": int(num_clips),
        }
    correct = output.argmax(1) == labels
    return {
        "accuracy": float(correct.mean()),
        "accuracy_full": float(correct[~partial].mean()) if (~partial).any() else math.nan,
        "accuracy_partial": float(correct[partial].mean()) if partial.any() else math.nan,
        "num_clips": int(num_clips),
    }


def train(name: str, settings: Optional[TrainSettings] = None, seed: int = TRAIN_SEED,
          config: SyntheticConfig = TRAIN_CONFIG, progress: bool = False) -> nn.Module:
    """Train demo model ``name`` from scratch; returns it in eval mode."""
    settings = settings or DEFAULT_SETTINGS[name]
    torch.manual_seed(seed)
    model = build_model(name)
    task = task_of(name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr,
                                                    total_steps=settings.steps, pct_start=0.15)
    loss_fn = nn.MSELoss() if task == "regression" else nn.CrossEntropyLoss()
    steps = range(settings.steps)
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc=name, unit="step")
    model.train()
    running = None
    for step in steps:
        batch = generate_arrays(settings.batch_size, seed, config, start=step * settings.batch_size)
        clip = clips_to_input(batch["frames"])
        target = (torch.from_numpy(batch["velocities"]) if task == "regression"
                  else torch.from_numpy(batch["labels"]))
        loss = loss_fn(model(clip), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if progress:
            steps.set_postfix(loss=f"{running:.3f}")
    return model.eval()


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m utils.demo.train", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="all", choices=MODEL_NAMES + ("all",))
    parser.add_argument("--steps", type=int, default=None, help="override the model's step count")
    parser.add_argument("--seed", type=int, default=TRAIN_SEED)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (results depend on it)")
    parser.add_argument("--num_heldout", type=int, default=512)
    parser.add_argument("--out_dir", type=Path, default=None,
                        help="folder for <name>.pt (default models/checkpoints)")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    names = MODEL_NAMES if args.model == "all" else (args.model,)
    for name in names:
        settings = DEFAULT_SETTINGS[name]
        if args.steps is not None:
            settings = replace(settings, steps=args.steps)
        started = time.perf_counter()
        model = train(name, settings, args.seed, progress=args.progress)
        train_seconds = time.perf_counter() - started
        scores = heldout_scores(model, task_of(name), args.num_heldout)
        out = (args.out_dir / f"{name}.pt") if args.out_dir else checkpoint_path(name)
        out.parent.mkdir(parents=True, exist_ok=True)
        command = f"python -m utils.demo.train --model {name} --seed {args.seed} --threads {args.threads}"
        if args.steps is not None:
            command += f" --steps {args.steps}"
        torch.save({
            "state_dict": model.state_dict(),
            "model": name,
            "command": command,
            "settings": asdict(settings),
            "data": asdict(TRAIN_CONFIG),
            "train_seed": args.seed,
            "heldout_seed": HELDOUT_SEED,
            "heldout": scores,
            "train_seconds": round(train_seconds, 1),
            "torch_version": str(torch.__version__),
        }, out)
        params = sum(p.numel() for p in model.parameters())
        shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in scores.items())
        print(f"{name}: {params} parameters, trained in {train_seconds:.0f} s; held-out {shown}; "
              f"saved {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
