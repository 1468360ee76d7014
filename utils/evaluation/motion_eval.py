"""Motion or appearance? Order sensitivity of the models and static-baseline maps, measured.

    OMP_NUM_THREADS=1 python -m utils.evaluation.motion_eval --num_clips 16 --seed 2024 [--i3d]

Synthetic part (clips of :mod:`utils.demo.synthetic`, generated in memory; the class is the
direction of the circle's motion, so a model that solves the task must use the frame order):

- for each demo classifier, :func:`vis_methods.views.temporal.temporal_sensitivity` on every clip
  (target: the true class): mean probability per condition, verdict counts, and how often the
  reversed clip is predicted as the *opposite* direction;
- integrated gradients (``--ig_steps``) from three baselines, the black clip, the clip's mean
  frame repeated (``static_mean``) and its first frame repeated (``static_first``): the pointing
  game (:func:`utils.evaluation.metrics.pointing_game`, ``--tolerance`` px, frames holding the evidence),
  the share of the map's mass on the circle's pixels (``evidence_mass``; chance = the circle's
  share of the frame), ``f(clip) - f(baseline)`` (the logit difference the map explains) and the
  relative completeness gap.

With ``--i3d``, the real I3D on the Kinetics clips in ``--kinetics_dir`` (target: the true label
from the clip name): the same temporal conditions, and integrated gradients (``--i3d_ig_steps``,
0 skips them) from the black and the static-mean baseline. There is no ground truth box for
these clips, so the maps are compared with each other (Spearman rank correlation of the
relevance maps) and by the logit difference each explains.

Writes into ``--out_dir`` (default ``visual_res/evaluation/motion``): ``temporal.csv`` (one row
per model, clip and condition), ``temporal_summary.csv`` (one row per model), ``maps.csv`` (one
row per model, clip and baseline), ``summary.md`` (the tables), and, unless ``--no_plots``, one
bar chart per clip under ``clips/<model>/``.
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

from models import get_model_spec
from utils.evaluation import metrics
from utils.evaluation.synthetic_eval import EvalClip, load_clips, model_input
from utils.io.atomic import write_csv, write_text
from utils.demo.synthetic import DIRECTIONS, SyntheticConfig, class_names as synthetic_class_names
from utils.pipeline.views import write_temporal_sensitivity
from vis_methods.views.temporal import (VERDICTS, static_clip, summarise_temporal_sensitivity,
                                        temporal_sensitivity)

DEMO_CLASSIFIERS = ("demo_3dcnn", "demo_lstm", "demo_lstm_attn")
SYNTHETIC_BASELINES = ("black", "static_mean", "static_first")
I3D_BASELINES = ("black", "static_mean")
_OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def opposite_class(class_index: int) -> int:
    """The synthetic class of the opposite direction (left <-> right, up <-> down)."""
    names = synthetic_class_names()
    direction = DIRECTIONS[class_index]
    return names.index(names[class_index].replace(direction, _OPPOSITE[direction]))


def baseline_clip(name: str, spec, clip: torch.Tensor) -> torch.Tensor:
    """The integrated-gradients baseline ``name`` for ``clip`` in the model's input space."""
    if name == "black":
        return spec.black_clip(clip)
    if name.startswith("static_"):
        return static_clip(clip, name[len("static_"):])
    raise ValueError(f"unknown baseline {name!r}")


def _integrated_gradients(model, clip: torch.Tensor, target: int, baseline: torch.Tensor,
                          steps: int) -> Tuple[np.ndarray, dict]:
    from vis_methods.gradient import integrated_grad
    info: dict = {}
    attribution = integrated_grad(model, clip, torch.tensor([target]), num_iter=steps,
                                  ig_baseline=baseline, info=info)
    return metrics.relevance_map(attribution[0], signed=True), info


def _map_row(info: dict) -> dict:
    """Integrated-gradients diagnostics of one clip (``info`` holds floats for one clip)."""
    score, base = float(info["target_score"]), float(info["baseline_score"])
    return {"target_logit": score, "baseline_logit": base, "explained": score - base,
            "completeness_gap": float(info["completeness_gap"]),
            "completeness_relative": float(info["completeness_relative"])}


def _temporal_rows(model_name: str, clip_name: str, label: str, result: dict) -> List[dict]:
    rows = []
    original = result["probabilities"]["original"]
    for condition, probability in result["probabilities"].items():
        rows.append({"model": model_name, "clip": clip_name, "label": label,
                     "target_class": result["target_class"], "condition": condition,
                     "probability": probability, "change": probability - original,
                     "predicted": result["predictions"][condition],
                     "verdict": result["verdict"], "reason": result["reason"]})
    return rows


def evaluate_synthetic(models: Sequence[str], clips: Sequence[EvalClip], *, ig_steps: int = 16,
                       tolerance: float = 15.0, segments: int = 4, num_shuffles: int = 3,
                       seed: int = 0, plots_dir: Optional[Path] = None,
                       baselines: Sequence[str] = SYNTHETIC_BASELINES) -> dict:
    """Temporal sensitivity and static-baseline maps of the demo classifiers on ``clips``.

    Returns ``{"temporal": DataFrame, "summary": DataFrame, "maps": DataFrame}`` (see the
    module docstring); ``ig_steps=0`` skips the maps.
    """
    temporal_rows, summary_rows, map_rows = [], [], []
    for model_name in models:
        spec = get_model_spec(model_name)
        if spec.task != "classification":
            raise ValueError(f"{model_name} is not a classifier")
        model = spec.load(None, spec.pretrain_datasets[0])
        names = spec.class_names(spec.pretrain_datasets[0])
        results = []
        opposite = []
        for clip in clips:
            x = model_input(spec, clip.frames)
            target = names.index(clip.truth["label"])
            result = temporal_sensitivity(model, x, target, segments=segments, seed=seed,
                                          num_shuffles=num_shuffles)
            results.append(result)
            opposite.append(result["predictions"]["reversed"] == opposite_class(target))
            temporal_rows += _temporal_rows(model_name, clip.name, clip.truth["label"], result)
            if plots_dir is not None:
                write_temporal_sensitivity(result, plots_dir / model_name, clip.name, model_name,
                                           names)
            truth = clip.truth
            for baseline_name in baselines if ig_steps > 0 else ():
                relevance, info = _integrated_gradients(
                    model, x, target, baseline_clip(baseline_name, spec, x), ig_steps)
                present = truth["present"]
                masks = truth["masks"]
                mass = float(relevance[present][masks[present]].sum() / relevance[present].sum())
                map_rows.append({
                    "model": model_name, "clip": clip.name, "baseline": baseline_name,
                    "partial": bool(not present.all()),
                    "pointing": metrics.pointing_game(relevance, truth["boxes"], present, tolerance),
                    "chance_pointing": metrics.pointing_chance(truth["boxes"], masks.shape[1:],
                                                               tolerance),
                    "evidence_mass": mass, "chance_mass": float(masks[present].mean()),
                    **_map_row(info)})
        summary = summarise_temporal_sensitivity(results)
        summary.insert(0, "model", model_name)
        summary["reversed_is_opposite"] = float(np.mean(opposite))
        summary_rows.append(summary)
    return {"temporal": pd.DataFrame(temporal_rows),
            "summary": pd.concat(summary_rows, ignore_index=True) if summary_rows else pd.DataFrame(),
            "maps": pd.DataFrame(map_rows)}


def evaluate_i3d(kinetics_dir: Path, *, ig_steps: int = 8, segments: int = 4,
                 num_shuffles: int = 3, seed: int = 0, plots_dir: Optional[Path] = None) -> dict:
    """The real I3D on the Kinetics clips of ``kinetics_dir``: temporal sensitivity (true
    label) and, unless ``ig_steps=0``, integrated gradients from the black and static-mean
    baselines compared with each other."""
    from utils.io.labels import parse_label
    from utils.io.clips import find_clips, load_frames, preprocess

    spec = get_model_spec("i3d")
    model = spec.load(None, "kinetics")
    names = spec.class_names("kinetics")
    temporal_rows, map_rows, results = [], [], []
    for source in find_clips(kinetics_dir):
        frames, _ = load_frames(source, spec.clip_length)
        x = spec.normalize(preprocess(frames, spec.resize, spec.crop).unsqueeze(0))
        label = parse_label(source.name, names)
        if label is None:
            raise ValueError(f"{source.name}: no Kinetics class in the clip name")
        target = names.index(label)
        result = temporal_sensitivity(model, x, target, segments=segments, seed=seed,
                                      num_shuffles=num_shuffles, batch_size=4)
        results.append(result)
        temporal_rows += _temporal_rows("i3d", source.name, label, result)
        if plots_dir is not None:
            write_temporal_sensitivity(result, plots_dir / "i3d", source.name, "i3d", names)
        if ig_steps > 0:
            maps: Dict[str, np.ndarray] = {}
            for baseline_name in I3D_BASELINES:
                maps[baseline_name], info = _integrated_gradients(
                    model, x, target, baseline_clip(baseline_name, spec, x), ig_steps)
                row = {"model": "i3d", "clip": source.name, "baseline": baseline_name,
                       **_map_row(info)}
                per_frame = maps[baseline_name].sum(axis=(1, 2))
                row["peak_frame"] = int(per_frame.argmax())
                map_rows.append(row)
            rho = metrics.spearman(maps["black"], maps["static_mean"])
            for row in map_rows[-len(I3D_BASELINES):]:
                row["spearman_black_vs_static"] = rho
    summary = summarise_temporal_sensitivity(results)
    summary.insert(0, "model", "i3d")
    return {"temporal": pd.DataFrame(temporal_rows), "summary": summary,
            "maps": pd.DataFrame(map_rows)}


# ---------------------------------------------------------------------------- the report
def _cell(values: pd.Series, digits: int = 2) -> str:
    mean, std, count = metrics.summarise(values.tolist())
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if count > 1 else f"{mean:.{digits}f}"


def temporal_table(summary: pd.DataFrame, temporal: pd.DataFrame) -> str:
    conditions = list(dict.fromkeys(temporal["condition"]))
    header = "| model | clips | " + " | ".join(conditions) + " | verdicts | reversed → other class |"
    lines = [header, "|" + "---|" * (len(conditions) + 4)]
    for _, row in summary.iterrows():
        cells = [row["model"], str(int(row["clips"]))]
        group = temporal[temporal["model"] == row["model"]]
        for condition in conditions:
            cells.append(_cell(group[group["condition"] == condition]["probability"]))
        counts = ", ".join(f"{name} {int(row['verdict_' + name.replace(' ', '_')])}"
                           for name in VERDICTS)
        cells.append(counts)
        flipped = f"{row['reversed_changes_prediction']:.2f}"
        if "reversed_is_opposite" in row and np.isfinite(row.get("reversed_is_opposite", math.nan)):
            flipped += f" (opposite direction {row['reversed_is_opposite']:.2f})"
        cells.append(flipped)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def synthetic_maps_table(maps: pd.DataFrame) -> str:
    lines = ["| model | IG baseline | pointing ↑ | evidence mass ↑ | f(clip) − f(baseline), logit "
             "| completeness gap, relative |", "|" + "---|" * 6]
    for (model, baseline), group in maps.groupby(["model", "baseline"], sort=False):
        lines.append("| " + " | ".join([model, f"`{baseline}`", _cell(group["pointing"]),
                                        _cell(group["evidence_mass"]),
                                        _cell(group["explained"]),
                                        _cell(group["completeness_relative"], 3)]) + " |")
    text = "\n".join(lines) + "\n"
    first = maps.drop_duplicates("clip")
    text += (f"\nChance: pointing {first['chance_pointing'].mean():.3f}, evidence mass "
             f"{first['chance_mass'].mean():.3f} (the circle's share of the frame).\n")
    return text


def i3d_maps_table(maps: pd.DataFrame) -> str:
    lines = ["| clip | IG baseline | f(clip) logit | f(baseline) logit | explained | "
             "completeness gap, relative | peak frame | ρ(black, static_mean) |",
             "|" + "---|" * 8]
    for _, row in maps.iterrows():
        lines.append("| " + " | ".join([
            row["clip"], f"`{row['baseline']}`", f"{row['target_logit']:.2f}",
            f"{row['baseline_logit']:.2f}", f"{row['explained']:.2f}",
            f"{row['completeness_relative']:.3f}", str(int(row["peak_frame"])),
            f"{row['spearman_black_vs_static']:.2f}"]) + " |")
    return "\n".join(lines) + "\n"


def i3d_clip_table(temporal: pd.DataFrame) -> str:
    conditions = list(dict.fromkeys(temporal["condition"]))
    lines = ["| clip | " + " | ".join(conditions) + " | verdict | why |",
             "|" + "---|" * (len(conditions) + 3)]
    for clip, group in temporal.groupby("clip", sort=False):
        probabilities = group.set_index("condition")["probability"]
        lines.append("| " + " | ".join([clip] + [f"{probabilities[c]:.3f}" for c in conditions]
                                       + [group["verdict"].iloc[0], group["reason"].iloc[0]])
                     + " |")
    return "\n".join(lines) + "\n"


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    write_csv(frame, path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m utils.evaluation.motion_eval",
                                     description="Order sensitivity of the models and "
                                                 "static-baseline integrated gradients.")
    parser.add_argument("--num_clips", type=int, default=16)
    parser.add_argument("--seed", type=int, default=2024, help="seed of the synthetic clips")
    parser.add_argument("--partial_fraction", type=float, default=0.5)
    parser.add_argument("--models", nargs="+", default=list(DEMO_CLASSIFIERS))
    parser.add_argument("--ig_steps", type=int, default=16,
                        help="integrated-gradients steps on the demo models (0: no maps)")
    parser.add_argument("--tolerance", type=float, default=15.0, help="pointing game, px")
    parser.add_argument("--segments", type=int, default=4)
    parser.add_argument("--num_shuffles", type=int, default=3)
    parser.add_argument("--shuffle_seed", type=int, default=0)
    parser.add_argument("--i3d", action="store_true", help="also the real I3D on --kinetics_dir")
    parser.add_argument("--kinetics_dir", type=Path, default=Path("test_data/kinetics"))
    parser.add_argument("--i3d_ig_steps", type=int, default=8,
                        help="integrated-gradients steps on I3D (0: no maps)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no_plots", action="store_true", help="no bar chart per clip")
    parser.add_argument("--out_dir", type=Path, default=Path("visual_res/evaluation/motion"))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in args.models:
        if name not in DEMO_CLASSIFIERS:
            parser.error(f"--models: {name!r} is not one of {', '.join(DEMO_CLASSIFIERS)}")
    if args.num_clips < 1 and not args.i3d:
        parser.error("--num_clips must be at least 1")
    torch.set_num_threads(args.threads)
    plots_dir = None if args.no_plots else args.out_dir / "clips"
    started, cpu_started = time.perf_counter(), time.process_time()
    parts, timings, notes = [], {}, []
    if args.num_clips > 0:
        config = replace(SyntheticConfig(), partial_fraction=args.partial_fraction)
        clips = load_clips(None, args.num_clips, args.seed, config)
        begin = time.perf_counter()
        parts.append(("synthetic", evaluate_synthetic(
            args.models, clips, ig_steps=args.ig_steps, tolerance=args.tolerance,
            segments=args.segments, num_shuffles=args.num_shuffles, seed=args.shuffle_seed,
            plots_dir=plots_dir)))
        timings["synthetic"] = time.perf_counter() - begin
    if args.i3d:
        begin = time.perf_counter()
        try:
            parts.append(("i3d", evaluate_i3d(args.kinetics_dir, ig_steps=args.i3d_ig_steps,
                                              segments=args.segments,
                                              num_shuffles=args.num_shuffles,
                                              seed=args.shuffle_seed, plots_dir=plots_dir)))
        except Exception as error:  # noqa: BLE001 - reported in the table, the rest stands
            notes.append(f"I3D part skipped: {type(error).__name__}: {error}")
        timings["i3d"] = time.perf_counter() - begin

    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    temporal = pd.concat([p["temporal"] for _, p in parts], ignore_index=True) if parts else pd.DataFrame()
    summary = pd.concat([p["summary"] for _, p in parts], ignore_index=True) if parts else pd.DataFrame()
    maps = pd.concat([p["maps"] for _, p in parts], ignore_index=True) if parts else pd.DataFrame()
    _write_csv(temporal, out / "temporal.csv")
    _write_csv(summary, out / "temporal_summary.csv")
    _write_csv(maps, out / "maps.csv")

    text = ["# Motion or appearance\n",
            "Target probability per condition (mean ± std over clips); segments frozen to their "
            "own first frame.\n"]
    for name, part in parts:
        if part["temporal"].empty:
            continue
        text += [f"\n## {name}: temporal sensitivity\n\n",
                 temporal_table(part["summary"], part["temporal"])]
        if name == "i3d":
            text += ["\nPer clip:\n\n", i3d_clip_table(part["temporal"])]
        if not part["maps"].empty:
            text += [f"\n## {name}: integrated gradients from the black and the static "
                     "baselines\n\n",
                     synthetic_maps_table(part["maps"]) if name == "synthetic"
                     else i3d_maps_table(part["maps"])]
    if notes:
        text += ["\nNotes:\n"] + [f"- {note}\n" for note in notes]
    command = shlex.join(["python", "-m", "utils.evaluation.motion_eval",
                          *(argv if argv is not None else sys.argv[1:])])
    seconds = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    text += [f"\nMade by `{command}` (wall time: {seconds}; process CPU time "
             f"{time.process_time() - cpu_started:.0f} s; {torch.get_num_threads()} "
             "thread(s)).\n"]
    report = "".join(text)
    write_text(out / "summary.md", report)
    print(report)
    print(f"{time.perf_counter() - started:.0f} s; wrote {out / 'summary.md'}, temporal.csv, "
          "temporal_summary.csv, maps.csv")


if __name__ == "__main__":
    main()
