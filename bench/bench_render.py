"""Rendering speed: the earlier matplotlib figure + GIF against the numpy/Pillow renderer.

For each frame size, both paths draw the same maps of the same clips (real frames from
``test_data/kinetics``, a smooth Grad-CAM-like map upsampled from a 2 x 7 x 7 grid) and write
their files to a temporary folder; times are per clip, with the ratio old / new.

    OMP_NUM_THREADS=1 python bench/bench_render.py [--clips 4] [--sizes 112 224] [--profile]

Each clip is drawn three times and its fastest time kept (robust to other work on a shared
machine). ``--profile`` prints the cProfile top entries of one clip of each path.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import pstats
import sys
import tempfile
import time
from dataclasses import replace
from typing import Optional, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.render import encoders, outputs  # noqa: E402
from utils.render import figures as visualize
from utils.render.encoders import save_figure, save_gif  # noqa: E402
from utils.io.clips import find_clips, load_frames, preprocess  # noqa: E402


def bench_clips(size: int, count: int, seed: int = 0):
    """``count`` (frames, saliency) pairs: kinetics frames cropped to ``size``, and a smooth
    signed map on a 2 x 7 x 7 grid upsampled to the frames (as Grad-CAM layers give)."""
    sources = find_clips(ROOT / "test_data" / "kinetics")
    generator = torch.Generator().manual_seed(seed)
    clips = []
    for index in range(count):
        frames, _ = load_frames(sources[index % len(sources)], 16)
        rgb = preprocess(frames, size * 128 // 112, size)                    # (3, T, H, W)
        coarse = torch.randn(1, 1, 2, 7, 7, generator=generator) + 0.5
        saliency = F.interpolate(coarse, size=(16, size, size), mode="trilinear", align_corners=False)
        clips.append((rgb.permute(1, 2, 3, 0).numpy(), saliency[0, 0].numpy()))
    return clips


# The renderer the pipeline used before the numpy/Pillow one, kept here for the comparison.
def title_text(clip: str, label: Optional[str], prediction: str, probability: float,
               target: str, method: str, model: str, extra: Sequence[str] = ()) -> str:
    parts = [f"{clip}", f"label: {label or 'unknown'}",
             (f"prediction: {prediction}" + (f" ({probability:.2f})" if probability == probability else ""))
             if prediction else "",
             f"explained: {target}", f"{method} / {model}", *extra]
    return "   |   ".join(p for p in parts if p)



def gif_frames(frames: np.ndarray, overlays: np.ndarray, min_side: int = 224) -> list:
    """Frames for a plain animation: the clip and its overlay side by side, upscaled for small
    clips (no captions; :func:`animation_frames` adds them)."""
    scale = visualize.scale_for(frames.shape[1], frames.shape[2], min_side)
    pairs = visualize.upscale(np.concatenate([visualize.to_uint8(frames), visualize.to_uint8(overlays)], axis=2), scale)
    return [Image.fromarray(pair) for pair in pairs]


def render_grid_matplotlib(frames: np.ndarray, overlays: np.ndarray, title: str,
                           importance: Optional[np.ndarray] = None,
                           attention: Optional[np.ndarray] = None) -> Figure:
    """The earlier matplotlib figure of the grid (kept for comparison in the render bench;
    :func:`render_grid_image` replaces it and is ~10x faster)."""
    num_frames = frames.shape[0]
    blocks = -(-num_frames // visualize.GRID_COLUMNS)
    bars = [b for b in (("map share\nper frame", importance, "tab:orange"),
                        ("model attention\nper frame", attention, "tab:blue")) if b[1] is not None]
    rows = 2 * blocks
    height_ratios = [1.0] * rows + [0.45] * len(bars)
    figure = Figure(figsize=(visualize.GRID_COLUMNS * 1.6, sum(height_ratios) * 1.6 + 0.6))
    grid = figure.add_gridspec(rows + len(bars), visualize.GRID_COLUMNS, height_ratios=height_ratios,
                               hspace=0.08, wspace=0.04)
    for block in range(blocks):
        for column in range(visualize.GRID_COLUMNS):
            t = block * visualize.GRID_COLUMNS + column
            for row, images in ((2 * block, frames), (2 * block + 1, overlays)):
                axis = figure.add_subplot(grid[row, column])
                axis.set_axis_off()
                if t < num_frames:
                    axis.imshow(images[t])
                    if row == 2 * block:
                        axis.set_title(f"t={t}", fontsize=7, pad=2)
    for offset, (label, values, colour) in enumerate(bars):
        axis = figure.add_subplot(grid[rows + offset, :])
        axis.bar(np.arange(num_frames), values, color=colour, width=0.8)
        axis.set_xlim(-0.5, num_frames - 0.5)
        axis.set_xticks(np.arange(num_frames))
        axis.tick_params(labelsize=6)
        axis.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    figure.suptitle(title, fontsize=9)
    return figure


def _prepare(saliency: np.ndarray, polarity: str):
    shown = visualize.apply_polarity(saliency, polarity)
    return visualize.normalize_map(shown), visualize.frame_importance(shown)


def old_path(frames, saliency, folder: Path, caption: visualize.Caption, style: str) -> None:
    """What the pipeline did before: a matplotlib figure per clip, savefig, GIF of plain pairs."""
    display, importance = _prepare(saliency, caption.polarity)
    overlays = visualize.overlay(frames, display, style)
    title = title_text(caption.clip, caption.label, caption.prediction, caption.probability,
                                 caption.target, caption.method, caption.model, caption.extra)
    figure = render_grid_matplotlib(frames, overlays, title, importance)
    save_figure(figure, folder / "old.png")
    save_gif(gif_frames(frames, overlays), folder / "old.gif")


class NewPath:
    """The numpy/Pillow renderer as the pipeline's writers call it: one
    :class:`visualize.Typesetter` for the whole run, and a caption that differs on every call
    (the clip name and score change from clip to clip, so their texts are drawn afresh, as in
    a real run; labels, ticks, legends and notes repeat)."""

    def __init__(self):
        self.fonts = visualize.Typesetter()
        self.calls = itertools.count()

    def __call__(self, frames, saliency, folder: Path, caption: visualize.Caption, style: str,
                 formats=("png", "gif"), min_side: int = encoders.ANIMATION_MIN_SIDE,
                 parallel: bool = True) -> None:
        call = next(self.calls)
        caption = replace(caption, clip=f"{caption.clip}-{call}", probability=(call % 97) / 100)
        display, importance = _prepare(saliency, caption.polarity)
        outputs.write_visuals(folder, "new", formats, frames, display, style, caption,
                              outputs.DrawOptions(importance, time_steps=2,
                                                  animation_min_side=min_side, parallel=parallel,
                                                  fonts=self.fonts))


def _time(fn, clips, *args, repeats: int = 3) -> float:
    """Seconds per clip: for each clip the fastest of ``repeats`` runs (the least disturbed by
    other work on the machine), averaged over the clips."""
    best = []
    for frames, saliency in clips:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn(frames, saliency, *args)
            times.append(time.perf_counter() - started)
        best.append(min(times))
    return sum(best) / len(best)


def _profile(fn, clip, *args) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    fn(*clip, *args)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(8)
    return "\n".join(line for line in text.getvalue().splitlines() if line.strip())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=4, help="clips per size (default 4)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    parser.add_argument("--style", default="jet", choices=visualize.STYLES)
    parser.add_argument("--profile", action="store_true", help="cProfile one clip of each path")
    args = parser.parse_args(argv)
    caption = visualize.Caption("abseiling-4lFmhj4x43c_66_10", "abseiling", "abseiling", 0.91,
                                "abseiling", "grad_cam", "i3d",
                                "both" if args.style == "diverging" else "positive",
                                ("layer Mixed_5c, grid 2 x 7 x 7",))
    print(f"{'size':>5} {'old png+gif':>12} {'new png+gif':>12} {'ratio':>6} {'one thread':>11} "
          f"{'new mp4':>8} {'new png+gif+mp4':>16} {'224-px animation':>17}   (seconds per clip, "
          f"{args.clips} clips)")
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        for size in args.sizes:
            clips = bench_clips(size, args.clips)
            old_path(*clips[0], folder, caption, args.style)                 # warm-up (imports, fonts)
            new_path = NewPath()                                               # one per run
            new_path(*clips[0], folder, caption, args.style, ("png", "gif", "mp4"))
            old = _time(old_path, clips, folder, caption, args.style)
            new = _time(new_path, clips, folder, caption, args.style)
            mp4 = _time(new_path, clips, folder, caption, args.style, ("mp4",))
            serial = _time(new_path, clips, folder, caption, args.style, ("png", "gif"),
                           encoders.ANIMATION_MIN_SIDE, False)
            every = _time(new_path, clips, folder, caption, args.style, ("png", "gif", "mp4"))
            large = _time(new_path, clips, folder, caption, args.style, ("png", "gif"), 224)
            print(f"{size:>5} {old:>12.3f} {new:>12.3f} {old / new:>6.1f} {serial:>11.3f} {mp4:>8.3f} "
                  f"{every:>16.3f} {large:>17.3f}")
            if args.profile:
                print(f"--- old path, {size} px\n" + _profile(old_path, clips[0], folder, caption, args.style))
                print(f"--- new path, {size} px\n" + _profile(new_path, clips[0], folder, caption, args.style))


if __name__ == "__main__":
    main()
