"""Before/after check for refactors: every picture the command writes, pixel for pixel.

    python bench/pictures_identical.py BEFORE_REF [AFTER_REF]   (AFTER_REF: the work tree)

Checks out ``BEFORE_REF`` (and ``AFTER_REF``) into temporary git worktrees, runs the same
commands in each on the bundled synthetic clips with ``demo_3dcnn`` (frame grids, GIF and MP4
animations, a comparison figure of two methods, signed maps with both polarities, top-k, and
the views of the network), then decodes every PNG and GIF frame on both sides and compares
the pixels. Prints one line per picture that differs and a count; exits 1 when any differs.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ROOT / "test_data" / "synthetic"

RUNS = [
    ["--vis_method", "grad_cam", "--formats", "png,gif,mp4,npy"],
    ["--vis_method", "grad_cam,integrated_grad", "--formats", "png,gif", "--num_iter", "4"],
    ["--vis_method", "grad", "--polarity", "both", "--formats", "png,gif"],
    ["--vis_method", "grad_cam", "--topk", "2", "--formats", "png"],
    ["--vis_method", "filters"],
    ["--vis_method", "activations"],
    ["--vis_method", "temporal_sensitivity"],
    ["--vis_method", "class_model", "--target", "circle moving left", "--num_iter", "3"],
]


def run_all(checkout: Path, out: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(checkout))
    for arguments in RUNS:
        command = [sys.executable, str(checkout / "main.py"), "--videos_dir", str(CLIPS),
                   "--model", "demo_3dcnn", "--no_gpu", "--quiet", "--out_dir", str(out),
                   *arguments]
        done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
        if done.returncode not in (0, 1):
            print(f"{checkout.name}: {' '.join(arguments)} exited {done.returncode}: "
                  f"{done.stderr.strip().splitlines()[-1:]}")


def frames_of(path: Path) -> list:
    with Image.open(path) as image:
        return [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)]


def compare(before: Path, after: Path) -> int:
    differing = 0
    names = sorted({p.relative_to(before) for p in before.rglob("*") if p.suffix in (".png", ".gif")}
                   | {p.relative_to(after) for p in after.rglob("*") if p.suffix in (".png", ".gif")})
    for name in names:
        first, second = before / name, after / name
        if not first.is_file() or not second.is_file():
            print(f"only {'after' if second.is_file() else 'before'}: {name}")
            differing += 1
            continue
        a, b = frames_of(first), frames_of(second)
        if len(a) != len(b) or any(x.shape != y.shape or not np.array_equal(x, y) for x, y in zip(a, b)):
            print(f"differs: {name}")
            differing += 1
    print(f"{len(names)} pictures compared, {differing} differ")
    return differing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after", nargs="?", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        trees = {}
        for side, ref in (("before", args.before), ("after", args.after)):
            if ref is None:
                trees[side] = ROOT
                continue
            trees[side] = temp / f"tree-{side}"
            subprocess.run(["git", "worktree", "add", "--detach", str(trees[side]), ref], cwd=ROOT,
                           check=True, capture_output=True)
        try:
            for side, tree in trees.items():
                run_all(tree, temp / f"out-{side}")
            return 1 if compare(temp / "out-before", temp / "out-after") else 0
        finally:
            for side, tree in trees.items():
                if tree != ROOT:
                    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                                   capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
