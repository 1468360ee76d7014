"""Score attribution methods x models against synthetic ground truth.

    python -m utils.evaluation.synthetic_eval --num_clips 32 --seed 2024 --partial_fraction 0.5 \\
        --models demo_3dcnn demo_lstm demo_lstm_attn demo_regression \\
        --methods grad grad_cam --out_dir visual_res/evaluation

Clips come from ``--clips_dir`` (folders written by ``python -m utils.demo.synthetic``) or are
generated in memory (``--num_clips``, ``--seed``). For every model, clip and method the map
is computed for the ground-truth class (regression: the negative squared error to the true
velocity) and scored with :mod:`utils.evaluation.metrics`:

- ``pointing``: pointing game over the frames holding the evidence (``--tolerance`` px);
- ``localisation``: mean IoU of the map's box (largest region above 15 % of each frame's
  maximum, as the Grad-CAM paper localises) with the evidence box, over those frames;
- ``deletion`` / ``insertion``: areas under the target-probability curves (``--steps``,
  ``--mode``); for the regression model the curves hold the negative squared error;
- ``temporal``: temporal grounding, on clips whose evidence spans part of the clip only;
- ``sanity``: Spearman correlation between the map and the map of a copy of the model whose
  top ``--top_k_layers`` parameterised layers are re-initialised (lower: the map depends on
  what the model learned);
- ``seconds``: wall time of one attribution.

Baselines are scored by the same code: ``centre`` (a bump at the frame centre), ``random``
(uniform noise) and, for models that have it, ``attention`` (the model's temporal attention
spread uniformly over each frame; only its temporal grounding is meaningful).

Writes ``results.csv`` (one row per model, method and clip), ``summary.csv`` and
``summary.md`` (mean, spread and count per model, method and metric) into ``--out_dir``.

``--model NAME`` (one network, e.g. ``i3d``) selects the real-clip mode of
:mod:`utils.evaluation.real_eval`: deletion / insertion, temporal grounding by splicing, the sanity
check and time per map on real clips, within ``--max_minutes``.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from models import get_model_spec
from utils.evaluation import metrics
from utils.evaluation.options import method_options_for
from utils.demo.synthetic import (SyntheticConfig, generate_clip, ground_truth_of, load_frames,
                             load_ground_truth)

BASELINES = ("centre", "random", "attention")
DEFAULT_METHODS = ("grad", "grad*input", "integrated_grad", "smooth_grad", "guided_backprop",
                   "grad_cam", "grad_cam_pp", "xgrad_cam", "layer_cam", "score_cam",
                   "attention_rollout", "attention_gradient", "centre", "random", "attention")
DEFAULT_MODELS = ("demo_3dcnn", "demo_lstm", "demo_lstm_attn", "demo_regression",
                  "demo_transformer")
# Methods that need the model's attention probabilities (transformers): skipped elsewhere.
ATTENTION_METHODS = ("attention_rollout", "attention_gradient")
METRICS = ("pointing", "deletion", "insertion", "temporal", "sanity", "seconds", "localisation")
# Display: which direction is better.
BETTER = {"pointing": "higher", "deletion": "lower", "insertion": "higher", "temporal": "higher",
          "sanity": "lower", "seconds": "lower", "localisation": "higher"}


@dataclass
class EvalClip:
    """One clip: ``frames`` uint8 ``(T, H, W, 3)`` and its ground truth (see
    :func:`utils.demo.synthetic.load_ground_truth`)."""

    name: str
    frames: np.ndarray
    truth: dict


@dataclass(frozen=True)
class EvalSettings:
    steps: int = 20
    mode: str = "blur"
    blur_sigma: float = 20.0
    tolerance: float = 15.0
    top_k_layers: int = 2
    method_options: tuple = ()
    sanity: bool = True
    seed: int = 0


def load_clips(clips_dir: Optional[Path] = None, num_clips: int = 32, seed: int = 2024,
               config: SyntheticConfig = SyntheticConfig(partial_fraction=0.5)) -> List[EvalClip]:
    """Clips from ``clips_dir`` (every sub-folder with a ``ground_truth.json``), or
    ``num_clips`` generated in memory with ``seed``."""
    if clips_dir is not None:
        folders = sorted(p for p in Path(clips_dir).iterdir()
                         if p.is_dir() and (p / "ground_truth.json").is_file())
        if not folders:
            raise FileNotFoundError(f"{clips_dir} holds no clip folders with ground_truth.json")
        return [EvalClip(p.name, load_frames(p), load_ground_truth(p)) for p in folders]
    clips = []
    for index in range(num_clips):
        clip = generate_clip(index, seed, config)
        clips.append(EvalClip(f"{clip.label}-s{seed}_{index:05d}", clip.frames, ground_truth_of(clip)))
    return clips


def _baseline_map(name: str, model: torch.nn.Module, clip: torch.Tensor, seed: int) -> np.ndarray:
    _, _, frames, height, width = clip.shape
    if name == "centre":
        return metrics.centre_map(frames, height, width)
    if name == "random":
        return np.random.default_rng(seed).uniform(size=(frames, height, width))
    if name == "attention":
        if not model.has_temporal_attention:
            raise ValueError("the model has no temporal_attention")
        with torch.no_grad():
            weights = model.temporal_attention(clip)[0].double().numpy()
        return np.broadcast_to(weights[:, None, None], (frames, height, width)).copy()
    raise ValueError(f"unknown baseline {name!r}")


def _resolve_method(name: str):
    """``(method name, its MethodInfo)`` for a registered method; raises on import failure."""
    from vis_methods import METHODS
    METHODS[name].resolve()
    return name, METHODS[name]


def _relevance(name: str, method, model, clip, target, options: dict,
               seed: int) -> np.ndarray:
    """One clip's relevance map ``(T, H, W)`` from a method or a baseline. ``options`` apply
    where the method declares them."""
    if name in BASELINES:
        return _baseline_map(name, model, clip, seed)
    from vis_methods import explain
    _, info = method
    taken = method_options_for(name, info, options)
    result = explain(name, model, clip, target, **taken)
    # Several maps (one per perturbation area): score the first.
    attribution = result.maps[:, :1] if len(result.names) > 1 else result.maps
    return metrics.relevance_map(attribution[0], result.signed)


def evaluate(models: Sequence[str], methods: Sequence[str], clips: Sequence[EvalClip],
             settings: EvalSettings = EvalSettings(), progress: bool = False
             ) -> tuple:
    """Score every method on every model and clip.

    Returns ``(results, notes)``: a DataFrame with one row per model, method and clip (the
    metrics of :data:`METRICS` plus ``chance_pointing``, ``chance_temporal``, ``correct``) and
    a list of text notes about methods or models that could not run.
    """
    notes: List[str] = []
    resolved: Dict[str, tuple] = {}
    for name in methods:
        if name in BASELINES:
            resolved[name] = (None, False)
            continue
        try:
            resolved[name] = _resolve_method(name)
        except Exception as error:  # noqa: BLE001 - a missing method is reported, not fatal
            notes.append(f"method {name}: unavailable ({type(error).__name__}: {error})")
    rows = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(models) * len(clips) * len(resolved), desc="evaluate", unit="map")
    for model_name in models:
        try:
            spec = get_model_spec(model_name)
            model = spec.adapter(spec.load(None, spec.pretrain_datasets[0]))
        except Exception as error:  # noqa: BLE001
            notes.append(f"model {model_name}: unavailable ({type(error).__name__}: {error})")
            if bar is not None:
                bar.update(len(clips) * len(resolved))
            continue
        class_names = spec.class_names(spec.pretrain_datasets[0])
        options = dict(settings.method_options)
        first = model_input(spec, clips[0].frames)
        randomized = (metrics.randomized_copy(model, settings.top_k_layers, settings.seed,
                                              example_input=first) if settings.sanity else None)
        failed: Dict[str, str] = {}
        for clip_index, clip in enumerate(clips):
            clip_input = model_input(spec, clip.frames)
            truth = clip.truth
            if tuple(clip_input.shape[2:]) != tuple(truth["masks"].shape):
                raise ValueError(f"{clip.name}: model input {tuple(clip_input.shape[2:])} does not "
                                 f"match the ground truth grid {truth['masks'].shape}")
            if spec.task == "regression":
                from vis_methods.targets import RegressionTarget
                target = RegressionTarget(torch.as_tensor(truth["regression_target"]))
                score_target = target
                correct = math.nan
            else:
                class_index = class_names.index(truth["label"])
                target = torch.tensor([class_index])
                score_target = class_index
                with torch.no_grad():
                    correct = float(model(clip_input).argmax(1).item() == class_index)
            partial = not truth["present"].all()
            # The replacement clip of the deletion / insertion games, made once per clip.
            replacement = (metrics.gaussian_blur_frames(clip_input, settings.blur_sigma)
                           if settings.mode == "blur" else torch.zeros_like(clip_input))
            chance_pointing = metrics.pointing_chance(truth["boxes"], truth["masks"].shape[1:],
                                                      settings.tolerance)
            for method_name, method in resolved.items():
                if bar is not None:
                    bar.update(1)
                if method_name in failed:
                    continue
                if method_name == "attention" and not model.has_temporal_attention:
                    continue
                if method_name in ATTENTION_METHODS and not callable(
                        getattr(model.network, "attention_record", None)):
                    continue
                seed = settings.seed * 100_003 + clip_index
                try:
                    started = time.perf_counter()
                    relevance = _relevance(method_name, method, model, clip_input, target,
                                           options, seed)
                    seconds = time.perf_counter() - started
                except Exception as error:  # noqa: BLE001 - recorded, the table goes on
                    failed[method_name] = f"{type(error).__name__}: {error}"
                    notes.append(f"method {method_name} on {model_name}: failed "
                                 f"({failed[method_name]})")
                    continue
                row = {"model": model_name, "method": method_name, "clip": clip.name,
                       "partial": partial, "correct": correct, "seconds": seconds,
                       "chance_pointing": chance_pointing,
                       "chance_temporal": (metrics.temporal_grounding_chance(truth["present"])
                                           if partial else math.nan)}
                spatial = method_name != "attention"
                row["pointing"] = (metrics.pointing_game(relevance, truth["boxes"], truth["present"],
                                                         settings.tolerance) if spatial else math.nan)
                row["localisation"] = (metrics.localisation_iou(relevance, truth["boxes"],
                                                                truth["present"])
                                       if spatial else math.nan)
                if spatial:
                    row["deletion"] = metrics.deletion(model, clip_input, relevance, score_target,
                                                       settings.steps, settings.mode, replacement,
                                                       seed=settings.seed)[0]
                    row["insertion"] = metrics.insertion(model, clip_input, relevance, score_target,
                                                         settings.steps, settings.mode, replacement,
                                                         seed=settings.seed)[0]
                else:
                    row["deletion"] = row["insertion"] = math.nan
                row["temporal"] = (float(metrics.temporal_grounding(relevance, truth["present"]))
                                   if partial else math.nan)
                if randomized is not None:
                    try:
                        random_relevance = _relevance(method_name, method, randomized,
                                                      clip_input, target, options, seed)
                        row["sanity"] = metrics.spearman(relevance, random_relevance)
                    except Exception as error:  # noqa: BLE001
                        notes.append(f"sanity check of {method_name} on {model_name}: failed "
                                     f"({type(error).__name__}: {error})")
                        row["sanity"] = math.nan
                else:
                    row["sanity"] = math.nan
                rows.append(row)
    if bar is not None:
        bar.close()
    return pd.DataFrame(rows), notes


def model_input(spec, frames: np.ndarray) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` -> normalised ``(1, 3, T, H, W)``; the frames must already have
    the model's size (ground truth is in stored pixels)."""
    rgb = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 255.0
    return spec.normalize(rgb.unsqueeze(0))


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample standard deviation and count per model, method and metric (one row per
    model and method; columns ``<metric>_mean``, ``<metric>_std``, ``<metric>_n``)."""
    rows = []
    if results.empty:
        return pd.DataFrame(rows)
    for (model, method), group in results.groupby(["model", "method"], sort=False):
        row = {"model": model, "method": method, "clips": len(group)}
        for metric in METRICS + ("chance_pointing", "chance_temporal", "correct"):
            values = group[metric].tolist() if metric in group else []
            mean, std, count = metrics.summarise(values)
            row[f"{metric}_mean"], row[f"{metric}_std"], row[f"{metric}_n"] = mean, std, count
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(mean: float, std: float, digits: int = 2) -> str:
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(summary: pd.DataFrame, notes: Sequence[str] = (), command: str = "") -> str:
    """The summary as a Markdown table (mean ± standard deviation over clips)."""
    header = ("| model | method | pointing ↑ | deletion ↓ | insertion ↑ | temporal ↑ | "
              "sanity ρ ↓ | s / map | loc IoU ↑ |")
    lines = [header, "|" + "---|" * 9]
    if summary.empty:
        summary = pd.DataFrame(columns=["model"])
    for _, row in summary.iterrows():
        cells = [row["model"], f"`{row['method']}`"]
        for metric in ("pointing", "deletion", "insertion", "temporal", "sanity"):
            cells.append(_cell(row[f"{metric}_mean"], row[f"{metric}_std"]))
        cells.append(f"{row['seconds_mean']:.3f}")
        cells.append(_cell(row["localisation_mean"], row["localisation_std"]))
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    extra = []
    for model, group in summary.groupby("model", sort=False):
        first = group.iloc[0]
        accuracy = (f", accuracy on these clips {first['correct_mean']:.3f}"
                    if np.isfinite(first["correct_mean"]) else "")
        temporal = (f"{first['chance_temporal_mean']:.3f}"
                    if np.isfinite(first["chance_temporal_mean"]) else "-")
        extra.append(f"- {model}: pointing chance (random peak) "
                     f"{first['chance_pointing_mean']:.3f}, temporal chance {temporal}{accuracy}")
    if extra:
        text += "\nChance levels:\n" + "\n".join(extra) + "\n"
    if notes:
        text += "\nNotes:\n" + "\n".join(f"- {note}" for note in notes) + "\n"
    if command:
        text += f"\nMade by `{command}`\n"
    return text


def synthetic_config(text: str, partial_fraction: float) -> SyntheticConfig:
    """A :class:`SyntheticConfig` from a JSON object of its fields (lists become tuples), e.g.
    ``'{"object_radius": [6, 8], "num_moving": [3, 5]}'`` for a harder setting; raises
    ``ValueError`` for a field it does not have."""
    changes = json.loads(text)
    if not isinstance(changes, dict):
        raise ValueError("--synthetic_config must be a JSON object")
    fields = set(SyntheticConfig.__dataclass_fields__)
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise ValueError(f"SyntheticConfig has no field(s) {', '.join(unknown)}")
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
    changes.setdefault("partial_fraction", partial_fraction)
    return replace(SyntheticConfig(), **changes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m utils.evaluation.synthetic_eval",
                                     description="Score attribution methods x models against "
                                                 "synthetic ground truth.")
    parser.add_argument("--clips_dir", type=Path, default=None,
                        help="folder of synthetic clip folders (default: generate in memory)")
    parser.add_argument("--num_clips", type=int, default=32)
    parser.add_argument("--seed", type=int, default=2024, help="seed of the generated clips")
    parser.add_argument("--partial_fraction", type=float, default=0.5)
    parser.add_argument("--synthetic_config", default="{}",
                        help='JSON object of SyntheticConfig fields for generated clips, e.g. '
                             '\'{"object_radius": [6, 8], "num_moving": [3, 5]}\'')
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        help=f"registered methods and baselines ({', '.join(BASELINES)})")
    parser.add_argument("--steps", type=int, default=20, help="deletion/insertion steps")
    parser.add_argument("--mode", choices=("blur", "fade"), default="blur")
    parser.add_argument("--blur_sigma", type=float, default=20.0,
                        help="blur of the deletion/insertion replacement, px")
    parser.add_argument("--tolerance", type=float, default=15.0, help="pointing game, px")
    parser.add_argument("--top_k_layers", type=int, default=2,
                        help="layers re-initialised for the sanity check")
    parser.add_argument("--no_sanity", action="store_true", help="skip the sanity check")
    parser.add_argument("--method_options", default="{}",
                        help='JSON object of method options, e.g. \'{"num_iter": 300}\'; a '
                             'method name maps to options for that method only, e.g. '
                             '\'{"rise": {"num_iter": 200}}\'')
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out_dir", type=Path, default=Path("visual_res/evaluation"))
    parser.add_argument("--progress", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    # "--model" (one real network) selects the real-clip mode; checked before argparse, which
    # would take it for an abbreviation of "--models".
    if any(a == "--model" or a.startswith("--model=") for a in arguments):
        from utils.evaluation import real_eval as evaluate_real
        evaluate_real.main(arguments)
        return
    parser = build_parser()
    args = parser.parse_args(arguments)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    options = json.loads(args.method_options)
    if not isinstance(options, dict):
        parser.error("--method_options must be a JSON object")
    try:
        config = synthetic_config(args.synthetic_config, args.partial_fraction)
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    clips = load_clips(args.clips_dir, args.num_clips, args.seed, config)
    settings = EvalSettings(steps=args.steps, mode=args.mode, blur_sigma=args.blur_sigma,
                            tolerance=args.tolerance,
                            top_k_layers=args.top_k_layers,
                            method_options=tuple(sorted(options.items())),
                            sanity=not args.no_sanity)
    started = time.perf_counter()
    results, notes = evaluate(args.models, args.methods, clips, settings, args.progress)
    summary = summarise(results)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    from utils.io.atomic import write_csv, write_text
    for name, frame in (("results.csv", results), ("summary.csv", summary)):
        write_csv(frame, args.out_dir / name)
    command = shlex.join(["python", "-m", "utils.evaluation.synthetic_eval", *arguments])
    text = markdown_table(summary, notes, command)
    write_text(args.out_dir / "summary.md", text)
    print(text)
    print(f"{len(clips)} clips, {time.perf_counter() - started:.0f} s; wrote "
          f"{args.out_dir / 'results.csv'}, summary.csv, summary.md")


if __name__ == "__main__":
    main()
