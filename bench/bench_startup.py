"""Benchmark: the one-clip shell call against its parts, in one run.

For ``demo_3dcnn`` and I3D (Grad-CAM, one bundled clip each, default formats) it prints

- torch import: ``import torch`` in a fresh interpreter;
- method alone: the first Grad-CAM call on the clip in a fresh process (model loaded, clip in
  memory), cold as in a one-clip run;
- the whole call: ``main.py`` on the clip as a subprocess, against the target
  method + torch import + 1 s;
- ``main.py --help`` and a bad option (exit 2), against the target of 1 s.

Every figure is the median of ``--repeats`` fresh processes, run with ``--threads`` threads and
niced, in rounds, so a burst of load on a shared machine hits every figure alike.
``--root`` measures another checkout of the project with the same script, ``--compare`` a
second one in the same rounds (before/after, side by side).

    python bench/bench_startup.py
    python bench/bench_startup.py --compare /path/to/other/checkout
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
CASES = {
    "demo_3dcnn": "test_data/synthetic/circle moving down-s7_00003",
    "i3d": "test_data/kinetics/abseiling-4lFmhj4x43c_66_10",
}

# Run in a fresh interpreter: times ``import torch`` and the first method call (cold).
PARTS = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
started = time.perf_counter()
import torch
torch_seconds = time.perf_counter() - started
torch.set_num_threads(int(sys.argv[4]))
from models import get_model_spec
from utils.io.clips import find_clips, load_frames, preprocess
from utils.io.labels import parse_label
from vis_methods import explain
spec = get_model_spec(sys.argv[2])
dataset = spec.pretrain_datasets[0]
adapter = spec.adapter(spec.load(None, dataset).eval())
names = spec.class_names(dataset)
clip = find_clips(sys.argv[3])[0]
frames, _ = load_frames(clip, spec.clip_length, resize=spec.resize)
tensor = adapter.normalize(preprocess(frames, spec.resize, spec.crop)).unsqueeze(0)
target = names.index(parse_label(clip.name, names))
started = time.perf_counter()
explain("grad_cam", adapter, tensor, target)
print(json.dumps({"torch": torch_seconds, "method": time.perf_counter() - started}))
"""


def _env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def _wall(command, threads: int, expect: int = 0) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, env=_env(threads), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != expect:
        raise SystemExit(f"{' '.join(map(str, command))}: exit {result.returncode}, expected "
                         f"{expect}\n{result.stderr[-2000:]}")
    return seconds


def _parts(root: Path, model: str, clip: Path, threads: int) -> dict:
    result = subprocess.run([sys.executable, "-c", PARTS, str(root), model, str(clip),
                             str(threads)], env=_env(threads), capture_output=True, text=True,
                            check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _round(root: Path, models, threads: int, work: Path, figures: dict, cli: dict,
           round_index: int) -> None:
    main_py = [sys.executable, str(root / "main.py")]
    cli["help"].append(_wall(main_py + ["--help"], threads))
    cli["bad option"].append(_wall(main_py + ["--videos_dir", ".", "--vis_method",
                                              "no_such_method"], threads, 2))
    for model in models:
        clip = root / CASES[model]
        parts = _parts(root, model, clip, threads)
        figures[model]["torch"].append(parts["torch"])
        figures[model]["method"].append(parts["method"])
        out = work / f"{model}-{round_index}"
        figures[model]["call"].append(_wall(
            main_py + ["--videos_dir", str(clip), "--out_dir", str(out), "--model", model,
                       "--vis_method", "grad_cam", "--no_gpu", "--quiet"], threads))
        shutil.rmtree(out, ignore_errors=True)


def _report(root: Path, models, figures: dict, cli: dict, args) -> None:
    print(f"one-clip calls of {root}, {args.threads} thread(s), nice {args.nice}, median of "
          f"{args.repeats}")
    for model in models:
        torch_s, method_s, call_s = (statistics.median(figures[model][k])
                                     for k in ("torch", "method", "call"))
        target = method_s + torch_s + 1.0
        print(f"  {model:<11} method alone {method_s:5.2f} s   torch import {torch_s:5.2f} s   "
              f"whole call {call_s:5.2f} s   (target <= {target:.2f} s: "
              f"{'met' if call_s <= target else 'missed'}; the rest "
              f"{call_s - method_s - torch_s:5.2f} s)")
        print(f"  {'':<11} per round: " + "; ".join(
            f"{k} " + " ".join(f"{v:.2f}" for v in figures[model][k]) for k in figures[model]))
    for name, values in cli.items():
        seconds = statistics.median(values)
        print(f"  main.py {name:<11} {seconds:5.2f} s   (target <= 1.00 s: "
              f"{'met' if seconds <= 1.0 else 'missed'}; per round "
              f"{' '.join(f'{v:.2f}' for v in values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=HERE,
                        help="checkout of the project to measure (default: this one)")
    parser.add_argument("--compare", type=Path, default=None,
                        help="a second checkout measured in the same rounds, side by side")
    parser.add_argument("--models", default="demo_3dcnn,i3d")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nice", type=int, default=10, help="niceness of the bench's processes")
    args = parser.parse_args()
    if args.nice:
        os.nice(args.nice)
    roots = [args.root.resolve()] + ([args.compare.resolve()] if args.compare else [])
    models = [m for m in args.models.split(",") if m]
    figures = {r: {m: {"torch": [], "method": [], "call": []} for m in models} for r in roots}
    cli = {r: {"help": [], "bad option": []} for r in roots}
    work = Path(tempfile.mkdtemp(prefix="vv-startup-"))
    try:
        for round_index in range(args.repeats):
            for root in roots:       # alternating: load on a shared machine hits both alike
                _round(root, models, args.threads, work, figures[root], cli[root], round_index)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for root in roots:
        _report(root, models, figures[root], cli[root], args)


if __name__ == "__main__":
    main()
