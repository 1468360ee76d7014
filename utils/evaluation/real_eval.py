"""Faithfulness of attribution methods on a real network and real clips, without annotation.

    python -m utils.evaluation.synthetic_eval --model i3d --methods grad grad_cam occlusion rise step \\
        --max_minutes 30 --out_dir visual_res/evaluation_i3d

(``utils.evaluation.synthetic_eval`` hands every command line holding ``--model`` to :func:`main` here.)
Clips are frame folders named ``<class name>-<anything>`` (Kinetics folders such as
``abseiling-4lFmhj4x43c_66_10``): by default the folders of ``<repo>/../shared/data/
kinetics_frames`` when it exists, then the bundled ``test_data/kinetics`` (a folder name seen
before is skipped, so a clip that is in both is scored once). Three protocols, all scored with
:mod:`utils.evaluation.metrics`:

- **clip scores**: deletion and insertion AUC with the blurred and with the faded replacement
  (``--steps`` steps each) for the network's top-1 class on the clip; the
  parameter-randomisation sanity check (Spearman correlation between the map and the map of a
  copy whose top ``--top_k_layers`` parameterised layers are re-initialised, on the first
  ``--sanity_clips`` clips of every method); wall time per map.
- **splicing** (temporal grounding without annotation): the first half of the frames of a clip
  of class A joined with the second half of a clip of another class B, and B's first half with
  A's second half; the map for A's class is scored by the share of its (non-negative) mass on
  A's frames (chance 0.5) and by whether its top frame is one of A's (chance 0.5). A runs over
  the clips the network classifies correctly, B over the clips of every other class.
- **budget**: ``--max_minutes`` bounds the whole run. Clip scores get ``--clip_share`` of
  the budget, splicing the rest (plus what clip scores left over). Within a phase every
  method has an equal share of the time; work goes in rounds -- every method on the first
  clip, then every method on the second, ... -- and a method's item runs when its expected
  time (that method's last measured item; before that, its map time or its a-priori cost in
  forward passes) fits its share (a method's first item: when it fits what is left of the
  phase). A second pass then spends what is left on items that fit, in the same order. So
  cheap methods get more clips than expensive ones. Spliced pairs run in a seeded
  random order of the ordered pairs (A, B), A-first and A-second alternating, the other order
  of each pair after all pairs had one. Expensive methods run with reduced settings
  (:func:`budget_options`) unless ``--method_options`` says otherwise; the table's notes list
  the settings and how many clips and pairs every method got.

Writes ``clips.csv`` (one row per method and clip), ``splices.csv`` (one row per method and
spliced clip), ``summary.csv`` and ``summary.md`` into ``--out_dir``.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

from utils.evaluation import metrics
from utils.io.atomic import write_csv, write_text

REPO_ROOT = Path(__file__).resolve().parents[2]
BASELINES = ("centre", "random")
DEFAULT_METHODS = ("grad", "smooth_grad", "guided_backprop", "grad_cam", "layer_cam",
                   "occlusion", "rise", "3d_ep", "step", "centre", "random")
# Maps of these cost many forward passes; a-priori cost in forward passes (before the first
# measured map), with the reduced settings of budget_options.
A_PRIORI_FORWARDS = {"score_cam": 64, "occlusion": 32, "rise": 48, "2d_ep": 40, "3d_ep": 40,
                     "step": 40, "integrated_grad": 16, "smooth_grad": 16}
CURVES = (("deletion", "blur"), ("insertion", "blur"), ("deletion", "fade"),
          ("insertion", "fade"))


def default_clip_dirs() -> List[Path]:
    """``<repo>/../shared/data/kinetics_frames`` (when it exists), then ``test_data/kinetics``."""
    dirs = [REPO_ROOT.parent / "shared" / "data" / "kinetics_frames",
            REPO_ROOT / "test_data" / "kinetics"]
    return [d for d in dirs if d.is_dir()]


def budget_options(name: str, num_frames: int, height: int, width: int) -> dict:
    """Reduced settings of the expensive methods for a budgeted run (each documented in the
    output's notes): occlusion with non-overlapping windows of half the frames and a quarter
    of the side (32 windows), RISE with 48 masks, the extremal perturbations with 20
    iterations, integrated and smooth gradients with 8 samples, Score-CAM with the 64 channels
    whose activation varies most (``score_cam_channels``; 1024 at I3D's ``Mixed_5c``, one
    forward pass each)."""
    if name == "occlusion":
        window = [max(1, num_frames // 2), max(1, height // 4), max(1, width // 4)]
        return {"occlusion_window": window, "occlusion_stride": window}
    if name == "rise":
        return {"num_iter": 48}
    if name in ("2d_ep", "3d_ep", "step"):
        return {"num_iter": 20}
    if name in ("integrated_grad", "smooth_grad"):
        return {"num_iter": 8}
    if name == "score_cam":
        return {"score_cam_channels": 64}
    return {}


# ------------------------------------------------------------------------------------ clips
@dataclass
class RealClip:
    """One clip: ``rgb`` float ``(3, T, H, W)`` in [0, 1] at the model's input size, and the
    class named by its folder."""

    name: str
    label: str
    rgb: torch.Tensor


def label_of(folder_name: str, class_names: Sequence[str]) -> str:
    """The longest class name ``c`` with ``folder_name`` starting ``c-``; ValueError if none."""
    matches = [c for c in class_names if folder_name.startswith(f"{c}-")]
    if not matches:
        raise ValueError(f"clip folder {folder_name!r} does not start with a class name "
                         f"followed by '-'")
    return max(matches, key=len)


def load_real_clips(dirs: Sequence[Path], class_names: Sequence[str], clip_length: int,
                    resize: int, crop: int) -> List[RealClip]:
    """Every frame folder of ``dirs`` (a folder name seen before is skipped), sampled to
    ``clip_length`` frames, resized and centre-cropped like the model's input."""
    from utils.io.clips import ClipSource, load_frames, preprocess
    clips: List[RealClip] = []
    seen = set()
    for directory in dirs:
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"clip folder {directory} does not exist")
        for folder in sorted(p for p in directory.iterdir()
                             if p.is_dir() and not p.name.startswith(".")):
            if folder.name in seen:
                continue
            seen.add(folder.name)
            frames, _ = load_frames(ClipSource(folder, False), clip_length, resize=resize)
            clips.append(RealClip(folder.name, label_of(folder.name, class_names),
                                  preprocess(frames, resize, crop)))
    if not clips:
        raise FileNotFoundError(f"no clip folders in {', '.join(map(str, dirs))}")
    return clips


def splice(first: torch.Tensor, second: torch.Tensor, cut: Optional[int] = None) -> torch.Tensor:
    """Frames ``[0, cut)`` of ``first`` followed by frames ``[cut, T)`` of ``second``
    (``(C, T, H, W)`` each, same shape; ``cut`` defaults to ``T // 2``)."""
    if first.shape != second.shape:
        raise ValueError(f"clips to splice differ in shape: {tuple(first.shape)} vs "
                         f"{tuple(second.shape)}")
    frames = first.shape[1]
    cut = frames // 2 if cut is None else cut
    if not 0 < cut < frames:
        raise ValueError(f"cut must be in 1..{frames - 1}, got {cut}")
    return torch.cat([first[:, :cut], second[:, cut:]], dim=1)


def splice_scores(relevance, on_a: np.ndarray) -> Tuple[float, float]:
    """``(share, top)``: the share of the map's (non-negative) mass on the frames where
    ``on_a`` is true, and the temporal-grounding score of its top frame (1 if the frame with
    the largest summed relevance is one of them; ties share). NaN share for an empty map."""
    sums = metrics.frame_relevance(relevance)
    if (sums < 0).any():
        raise ValueError("splice_scores takes a non-negative relevance map")
    on_a = np.asarray(on_a, dtype=bool)
    if on_a.shape != sums.shape:
        raise ValueError(f"on_a has {on_a.shape[0]} frames, the map {sums.shape[0]}")
    total = sums.sum()
    share = float(sums[on_a].sum() / total) if total > 0 else math.nan
    return share, metrics.temporal_grounding(relevance, on_a)


def splice_units(clips: Sequence[RealClip], anchors: Sequence[int], seed: int
                 ) -> List[Tuple[int, int, bool]]:
    """Spliced clips to score, in budget order: ``(a, b, a_first)`` for every anchor ``a``
    and every clip ``b`` of another class. The ordered pairs are shuffled with ``seed``; the
    first pass takes A-first and A-second alternately, the second pass the other order."""
    pairs = [(a, b) for a in anchors for b in range(len(clips))
             if clips[b].label != clips[a].label]
    order = np.random.default_rng(seed).permutation(len(pairs))
    first = [(pairs[i][0], pairs[i][1], k % 2 == 0) for k, i in enumerate(order)]
    return first + [(a, b, not a_first) for a, b, a_first in first]


# --------------------------------------------------------------------------------- scoring
@dataclass
class RealSettings:
    methods: Tuple[str, ...] = DEFAULT_METHODS
    steps: int = 10
    blur_sigma: float = 20.0
    top_k_layers: int = 2
    sanity_clips: int = 2
    max_minutes: float = 30.0
    clip_share: float = 0.6
    method_options: dict = field(default_factory=dict)
    reduce: bool = True
    seed: int = 0


def _map(name: str, model, clip: torch.Tensor, target: int, options: dict,
         seed: int) -> np.ndarray:
    """Relevance ``(T, H, W)`` of one clip (non-negative: signed maps by absolute value)."""
    _, _, frames, height, width = clip.shape
    if name == "centre":
        return metrics.centre_map(frames, height, width)
    if name == "random":
        return np.random.default_rng(seed).uniform(size=(frames, height, width))
    from vis_methods import explain
    result = explain(name, model, clip, torch.tensor([target], device=clip.device), **options)
    maps = result.maps[:, :1] if len(result.names) > 1 else result.maps
    return metrics.relevance_map(maps[0], result.signed)


class _Budget:
    """Wall-clock budget of one phase. Every method has an equal share of it; an item runs
    when its expected time fits the method's share (the method's first item: when it fits
    what is left), or, in the second pass, when it fits what is left."""

    def __init__(self, seconds: float, forward_seconds: float, methods: Sequence[str],
                 map_seconds: Optional[Dict[str, float]] = None):
        self.deadline = time.perf_counter() + seconds
        self.share = max(seconds, 0.0) / max(len(methods), 1)
        self.forward_seconds = forward_seconds
        self.map_seconds = dict(map_seconds or {})
        self.last: Dict[str, float] = {}
        self.used: Dict[str, float] = {}

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def expected(self, method: str, extra_forwards: float) -> float:
        if method in self.last:
            return self.last[method]
        if method in self.map_seconds:
            return self.map_seconds[method] + extra_forwards * self.forward_seconds
        return (A_PRIORI_FORWARDS.get(method, 3) + extra_forwards) * self.forward_seconds

    def fits(self, method: str, extra_forwards: float, second_pass: bool) -> bool:
        expected = self.expected(method, extra_forwards)
        if expected > self.left():
            return False
        used = self.used.get(method, 0.0)
        return second_pass or used == 0.0 or used + expected <= self.share

    def spend(self, method: str, seconds: float) -> None:
        self.last[method] = seconds
        self.used[method] = self.used.get(method, 0.0) + seconds


def run(model: torch.nn.Module, class_names: Sequence[str], clips: Sequence[RealClip],
        normalize, settings: RealSettings = RealSettings(), progress: bool = False
        ) -> Tuple[pd.DataFrame, pd.DataFrame, List[str]]:
    """Score ``settings.methods`` on ``clips`` with ``model`` (an ``(N, C, T, H, W) -> (N, K)``
    module; ``normalize`` maps RGB in [0, 1] to its input). Returns ``(clip_rows,
    splice_rows, notes)``."""
    from vis_methods import METHODS
    notes: List[str] = []
    unknown = [m for m in settings.methods if m not in BASELINES and m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}")
    if len({c.label for c in clips}) < 2:
        raise ValueError("splicing needs clips of at least two classes")
    model.eval()
    device = next(model.parameters()).device
    inputs = [normalize(c.rgb.unsqueeze(0).to(device)) for c in clips]
    _, _, frames, height, width = inputs[0].shape
    started, cpu_started = time.perf_counter(), time.process_time()
    with torch.no_grad():
        probabilities = [torch.softmax(model(x), dim=1)[0] for x in inputs]
    forward_seconds = (time.perf_counter() - started) / len(clips)
    predicted = [int(p.argmax()) for p in probabilities]
    labels = [class_names.index(c.label) for c in clips]
    correct = [p == t for p, t in zip(predicted, labels)]
    notes.append(f"network top-1 correct on {sum(correct)} of {len(clips)} clips; one forward "
                 f"pass {forward_seconds:.2f} s")
    # Options per method: reduced settings for the budget, then the user's.
    from utils.evaluation.options import method_options_for
    options: Dict[str, dict] = {}
    for name in settings.methods:
        if name in BASELINES:
            continue
        chosen = budget_options(name, frames, height, width) if settings.reduce else {}
        chosen.update(method_options_for(name, METHODS[name], settings.method_options))
        options[name] = chosen
        if chosen:
            notes.append(f"{name} ran with {json.dumps(chosen)}")
    randomized = None
    if settings.sanity_clips > 0:
        randomized = metrics.randomized_copy(model, settings.top_k_layers, settings.seed,
                                             example_input=inputs[0])
        layers = metrics.parameterised_layers(model, inputs[0])[-settings.top_k_layers:]
        notes.append(f"sanity: layers re-initialised: {', '.join(layers)}")
    total = settings.max_minutes * 60.0
    failed: Dict[str, str] = {}
    curve_forwards = 4 * (settings.steps + 1)

    # ---- phase 1: clip scores, in rounds over the clips
    budget = _Budget(total * settings.clip_share - (time.perf_counter() - started),
                     forward_seconds, settings.methods)
    clip_rows = []
    scored: Dict[str, int] = {}
    done = set()
    map_seconds: Dict[str, float] = {}
    replacements: Dict[int, dict] = {}
    for second_pass in (False, True):
        for index, (clip, x) in enumerate(zip(clips, inputs)):
            target = predicted[index]
            for name in settings.methods:
                if name in failed or (name, index) in done:
                    continue
                sanity = randomized is not None and scored.get(name, 0) < settings.sanity_clips
                extra = curve_forwards + (A_PRIORI_FORWARDS.get(name, 3) if sanity else 0)
                if not budget.fits(name, extra, second_pass):
                    continue
                if index not in replacements:
                    replacements[index] = {
                        "blur": metrics.gaussian_blur_frames(x, settings.blur_sigma),
                        "fade": torch.zeros_like(x)}
                item_started = time.perf_counter()
                seed = settings.seed * 100_003 + index
                try:
                    relevance = _map(name, model, x, target, options.get(name, {}), seed)
                    seconds = time.perf_counter() - item_started
                    row = {"method": name, "clip": clip.name, "label": clip.label,
                           "target": class_names[target], "correct": float(correct[index]),
                           "probability": float(probabilities[index][target]),
                           "seconds": seconds}
                    for game, mode in CURVES:
                        function = metrics.deletion if game == "deletion" else metrics.insertion
                        row[f"{game}_{mode}"] = function(
                            model, x, relevance, target, settings.steps, mode,
                            replacements[index][mode], seed=settings.seed)[0]
                    row["sanity"] = (metrics.spearman(relevance, _map(
                        name, randomized, x, target, options.get(name, {}), seed))
                        if sanity else math.nan)
                except Exception as error:  # noqa: BLE001 - recorded, the table goes on
                    failed[name] = f"{type(error).__name__}: {error}"
                    notes.append(f"method {name}: failed ({failed[name]})")
                    continue
                budget.spend(name, time.perf_counter() - item_started)
                map_seconds[name] = seconds
                done.add((name, index))
                scored[name] = scored.get(name, 0) + 1
                clip_rows.append(row)
                if progress:
                    print(f"clip {clip.name} {name}: {seconds:.1f} s/map, item "
                          f"{budget.last[name]:.0f} s, {budget.left():.0f} s left", flush=True)
    skipped = {name: len(clips) - scored.get(name, 0) for name in settings.methods}

    # ---- phase 2: splicing
    anchors = [i for i in range(len(clips)) if correct[i]]
    units = splice_units(clips, anchors, settings.seed)
    notes.append(f"splicing: A over the {len(anchors)} correctly classified clips, B over the "
                 f"clips of other classes: {len(units)} spliced clips (ordered pairs x both "
                 f"orders); taken in a seeded random order, A-first and A-second alternating")
    budget = _Budget(total - (time.perf_counter() - started), forward_seconds,
                     settings.methods, map_seconds)
    splice_rows = []
    spliced: Dict[str, int] = {}
    cut = frames // 2
    done = set()
    for second_pass in (False, True):
        for unit, (a, b, a_first) in enumerate(units):
            x = None
            on_a = np.arange(frames) < cut if a_first else np.arange(frames) >= cut
            for name in settings.methods:
                if name in failed or (name, unit) in done or not budget.fits(name, 0, second_pass):
                    continue
                if x is None:
                    rgb = (splice(clips[a].rgb, clips[b].rgb, cut) if a_first
                           else splice(clips[b].rgb, clips[a].rgb, cut))
                    x = normalize(rgb.unsqueeze(0).to(device))
                item_started = time.perf_counter()
                try:
                    relevance = _map(name, model, x, labels[a], options.get(name, {}),
                                     settings.seed * 100_003 + 1000 + unit)
                except Exception as error:  # noqa: BLE001
                    failed[name] = f"{type(error).__name__}: {error}"
                    notes.append(f"method {name}: failed on a spliced clip ({failed[name]})")
                    continue
                budget.spend(name, time.perf_counter() - item_started)
                done.add((name, unit))
                spliced[name] = spliced.get(name, 0) + 1
                share, top = splice_scores(relevance, on_a)
                splice_rows.append({"method": name, "a": clips[a].name, "b": clips[b].name,
                                    "a_first": a_first, "share_on_a": share, "top_on_a": top,
                                    "seconds": budget.last[name]})
    splice_skipped = {name: len(units) - spliced.get(name, 0) for name in settings.methods}
    for name in settings.methods:
        if name not in failed:
            notes.append(f"{name}: scored on {len(clips) - skipped[name]} of {len(clips)} clips "
                         f"and {len(units) - splice_skipped[name]} of {len(units)} spliced clips")
    notes.append(f"run took {time.perf_counter() - started:.0f} s of a {total:.0f} s budget "
                 f"(wall clock), {time.process_time() - cpu_started:.0f} s of CPU time")
    return pd.DataFrame(clip_rows), pd.DataFrame(splice_rows), notes


# ---------------------------------------------------------------------------------- output
CLIP_METRICS = ("deletion_blur", "insertion_blur", "deletion_fade", "insertion_fade",
                "sanity", "seconds")
SPLICE_METRICS = ("share_on_a", "top_on_a")


def summarise(clip_rows: pd.DataFrame, splice_rows: pd.DataFrame,
              methods: Sequence[str]) -> pd.DataFrame:
    """One row per method: mean, sample standard deviation and count of every metric."""
    rows = []
    for name in methods:
        row = {"method": name}
        for frame, names in ((clip_rows, CLIP_METRICS), (splice_rows, SPLICE_METRICS)):
            group = frame[frame["method"] == name] if not frame.empty else frame
            for metric in names:
                values = group[metric].tolist() if metric in group else []
                mean, std, count = metrics.summarise(values)
                row[f"{metric}_mean"], row[f"{metric}_std"], row[f"{metric}_n"] = mean, std, count
        rows.append(row)
    return pd.DataFrame(rows)


def position_lines(splice_rows: pd.DataFrame, methods: Sequence[str]) -> List[str]:
    """Mean share on A per method with A's frames first and with them second: a map that
    follows the position rather than the content favours one half in both."""
    lines = []
    if splice_rows.empty:
        return lines
    for name in methods:
        group = splice_rows[splice_rows["method"] == name]
        if group.empty:
            continue
        a_first = group["a_first"].astype(bool)
        first, second = group[a_first]["share_on_a"], group[~a_first]["share_on_a"]
        parts = [f"{label} {values.mean():.2f} (n {len(values)})"
                 for label, values in (("A first", first), ("A second", second)) if len(values)]
        lines.append(f"`{name}`: " + ", ".join(parts))
    return lines


def paired_wins(clip_rows: pd.DataFrame, methods: Sequence[str], reference: str = "random",
                games: Sequence[str] = ("deletion_blur", "insertion_blur")) -> List[str]:
    """How often each method beats ``reference`` on the same clip (deletion: lower AUC,
    insertion: higher): ``wins / clips both were scored on`` per game. With few clips this is
    the plainest statement of how sure a difference in the means is."""
    lines = []
    if clip_rows.empty or reference not in set(clip_rows["method"]):
        return lines
    base = clip_rows[clip_rows["method"] == reference].set_index("clip")
    for name in methods:
        if name == reference:
            continue
        own = clip_rows[clip_rows["method"] == name].set_index("clip")
        shared = own.index.intersection(base.index)
        if len(shared) == 0:
            continue
        parts = []
        for game in games:
            better = (own.loc[shared, game] < base.loc[shared, game] if game.startswith("deletion")
                      else own.loc[shared, game] > base.loc[shared, game])
            parts.append(f"{game.replace('_', ' ')} {int(better.sum())}/{len(shared)}")
        lines.append(f"`{name}`: " + ", ".join(parts))
    return lines


def _cell(row, metric: str, digits: int = 2) -> str:
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    return "-" if not np.isfinite(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(summary: pd.DataFrame, notes: Sequence[str] = (), command: str = "") -> str:
    """The summary as Markdown: mean ± standard deviation over clips (n: clips, spliced clips)."""
    lines = ["| method | n clips | deletion blur ↓ | insertion blur ↑ | deletion fade ↓ | "
             "insertion fade ↑ | sanity ρ ↓ | s / map | n spliced | share on A ↑ | "
             "top frame on A ↑ |", "|" + "---|" * 11]
    for _, row in summary.iterrows():
        seconds = row["seconds_mean"]
        lines.append("| " + " | ".join([
            f"`{row['method']}`", str(int(row["deletion_blur_n"])),
            _cell(row, "deletion_blur"), _cell(row, "insertion_blur"),
            _cell(row, "deletion_fade"), _cell(row, "insertion_fade"), _cell(row, "sanity"),
            f"{seconds:.1f}" if np.isfinite(seconds) else "-",
            str(int(row["share_on_a_n"])), _cell(row, "share_on_a"),
            _cell(row, "top_on_a")]) + " |")
    text = "\n".join(lines) + "\n\nChance: share on A 0.50, top frame on A 0.50.\n"
    if notes:
        text += "\nNotes:\n" + "\n".join(f"- {note}" for note in notes) + "\n"
    if command:
        text += f"\nMade by `{command}`\n"
    return text


def extra_sections(clip_rows: pd.DataFrame, splice_rows: pd.DataFrame,
                   methods: Sequence[str]) -> str:
    """The parts of ``summary.md`` below the table: share on A by A's position, and wins
    against the random map on the same clips."""
    text = ""
    position = position_lines(splice_rows, methods)
    if position:
        text += "\nShare on A by the position of A's frames:\n" + \
            "\n".join(f"- {line}" for line in position) + "\n"
    wins = paired_wins(clip_rows, methods)
    if wins:
        text += "\nClips on which the map beats the random map (same clip):\n" + \
            "\n".join(f"- {line}" for line in wins) + "\n"
    return text


def write_outputs(out_dir: Path, clip_rows: pd.DataFrame, splice_rows: pd.DataFrame,
                  summary: pd.DataFrame, text: str) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in (("clips.csv", clip_rows), ("splices.csv", splice_rows),
                        ("summary.csv", summary)):
        write_csv(frame, out_dir / name)
    write_text(out_dir / "summary.md", text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m utils.evaluation.real_eval --model MODEL",
        description="Score attribution methods on a real network and real clips (deletion / "
                    "insertion, splicing, sanity check, time) within a time budget.")
    parser.add_argument("--model", required=True, help="registered model, e.g. i3d")
    parser.add_argument("--weights", default=None, help="weights file (default: the model's)")
    parser.add_argument("--clips_dirs", nargs="+", type=Path, default=None,
                        help="folders of clip folders named '<class>-...' (default: "
                             "../shared/data/kinetics_frames if present, then test_data/kinetics)")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        help=f"registered methods and baselines ({', '.join(BASELINES)})")
    parser.add_argument("--max_minutes", type=float, default=30.0,
                        help="wall-clock budget of the whole run")
    parser.add_argument("--clip_share", type=float, default=0.6,
                        help="share of the budget for the clip scores (the rest: splicing)")
    parser.add_argument("--steps", type=int, default=10, help="deletion/insertion steps")
    parser.add_argument("--blur_sigma", type=float, default=20.0)
    parser.add_argument("--top_k_layers", type=int, default=2,
                        help="layers re-initialised for the sanity check")
    parser.add_argument("--sanity_clips", type=int, default=2,
                        help="clips per method with the sanity check (0: none)")
    parser.add_argument("--crop", type=int, default=None,
                        help="input side (default the model's; the resize scales with it)")
    parser.add_argument("--method_options", default="{}",
                        help='JSON object of method options; a method name maps to options for '
                             'that method only, e.g. \'{"rise": {"num_iter": 200}}\'')
    parser.add_argument("--full_settings", action="store_true",
                        help="run expensive methods with their defaults, not reduced settings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--out_dir", type=Path, default=Path("visual_res/evaluation_real"))
    parser.add_argument("--progress", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    from models import get_model_spec
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, value in (("max_minutes", args.max_minutes), ("steps", args.steps)):
        if value <= 0:
            parser.error(f"--{name} must be positive")
    if not 0 < args.clip_share <= 1:
        parser.error("--clip_share must be in (0, 1]")
    options = json.loads(args.method_options)
    if not isinstance(options, dict):
        parser.error("--method_options must be a JSON object")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device!r}: expected cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = get_model_spec(args.model)
    if spec.task != "classification":
        parser.error(f"--model {args.model}: the real-network mode needs a classifier")
    dataset = spec.pretrain_datasets[0]
    model = spec.adapter(spec.load(args.weights, dataset)).to(device)
    class_names = list(spec.class_names(dataset))
    crop = args.crop or spec.crop
    resize = round(crop * spec.resize / spec.crop)
    dirs = args.clips_dirs or default_clip_dirs()
    if not dirs:
        parser.error("no clip folders: pass --clips_dirs")
    clips = load_real_clips(dirs, class_names, spec.clip_length, resize, crop)
    settings = RealSettings(methods=tuple(args.methods), steps=args.steps,
                            blur_sigma=args.blur_sigma, top_k_layers=args.top_k_layers,
                            sanity_clips=args.sanity_clips, max_minutes=args.max_minutes,
                            clip_share=args.clip_share, method_options=options,
                            reduce=not args.full_settings, seed=args.seed)
    clip_rows, splice_rows, notes = run(model, class_names, clips, model.normalize, settings,
                                        args.progress)
    notes.insert(0, f"{args.model} at {crop}x{crop}, {spec.clip_length} frames; {len(clips)} "
                    f"clips from {', '.join(str(d) for d in dirs)}; deletion/insertion with "
                    f"{args.steps} steps, target the network's top-1 class")
    summary = summarise(clip_rows, splice_rows, settings.methods)
    command = shlex.join(["python", "-m", "utils.evaluation.synthetic_eval",
                          *(argv if argv is not None else sys.argv[1:])])
    text = markdown_table(summary, notes, command) + extra_sections(clip_rows, splice_rows,
                                                                     settings.methods)
    write_outputs(args.out_dir, clip_rows, splice_rows, summary, text)
    print(text)
    print(f"wrote {args.out_dir / 'summary.md'}, clips.csv, splices.csv, summary.csv")


if __name__ == "__main__":
    main()
