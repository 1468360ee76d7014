"""Benchmark: the whole command against the method alone, on the same clips in one run.

For each model it prints

- method only: the attribution of every clip, in this process, clips already in memory;
- start-up: ``main.py`` over the same folder when every clip is already done (imports,
  finding clips, reading the summary: what a run costs besides its clips);
- end to end with ``--formats npy`` and with ``--formats png,gif,npy``, as subprocesses, with
  clips per second and the ratio to the method alone;
- the folder split over 2 processes (``--shard 0/2`` and ``1/2`` at once) against 1.

The end-to-end runs go in ``--repeats`` rounds (npy, start-up, all formats, in turn), and each
figure is the median over the rounds, so one burst of load on a shared machine does not decide
a ratio; the all-formats / npy ratio of every round is printed too.

Targets (on the 2-core development machine): all formats within 1.5x of
the npy-only run; the npy-only run within 1.5x of method time plus start-up.

    python bench/bench_pipeline.py                                  # demo_3dcnn, 64 clips
    python bench/bench_pipeline.py --model i3d --clips_dir test_data/kinetics
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models import get_model_spec  # noqa: E402
from utils.io.labels import parse_label  # noqa: E402
from utils.io.clips import find_clips, load_frames, preprocess  # noqa: E402
from vis_methods import explain  # noqa: E402


def synthetic_clips(folder: Path, count: int, seed: int) -> Path:
    from utils.demo.synthetic import SyntheticConfig, write_dataset
    write_dataset(folder, count, seed, SyntheticConfig(), image_format="jpg")
    return folder


def method_seconds(model_name: str, clips_dir: Path, method: str, threads: int) -> float:
    torch.set_num_threads(threads)
    spec = get_model_spec(model_name)
    dataset = spec.pretrain_datasets[0]
    adapter = spec.adapter(spec.load(None, dataset))
    names = spec.class_names(dataset)
    inputs = []
    for clip in find_clips(clips_dir):
        frames, _ = load_frames(clip, spec.clip_length, resize=spec.resize)
        tensor = adapter.normalize(preprocess(frames, spec.resize, spec.crop)).unsqueeze(0)
        label = parse_label(clip.name, names)
        with torch.no_grad():
            target = names.index(label) if label else int(adapter(tensor).argmax())
        inputs.append((tensor, target))
    started = time.perf_counter()
    for tensor, target in inputs:
        explain(method, adapter, tensor, target)
    return time.perf_counter() - started


def command_seconds(args, threads: int, extra=(), parallel_shards: int = 1) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    base = [sys.executable, str(ROOT / "main.py"), "--videos_dir", str(args[0]), "--out_dir",
            str(args[1]), "--model", args[2], "--vis_method", args[3], "--no_gpu", "--quiet",
            *extra]
    started = time.perf_counter()
    if parallel_shards == 1:
        subprocess.run(base, env=env, check=True, capture_output=True)
    else:
        procs = [subprocess.Popen(base + ["--shard", f"{i}/{parallel_shards}"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for i in range(parallel_shards)]
        for proc in procs:
            if proc.wait() != 0:
                raise SystemExit("a shard failed")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="demo_3dcnn")
    parser.add_argument("--method", default="grad_cam")
    parser.add_argument("--clips_dir", type=Path, default=None,
                        help="clips to use (default: --num_clips synthetic clips)")
    parser.add_argument("--num_clips", type=int, default=64)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of the end-to-end runs; figures are medians")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vv-bench-"))
    try:
        clips_dir = args.clips_dir or synthetic_clips(work / "clips", args.num_clips, args.seed)
        count = len(find_clips(clips_dir))
        method = method_seconds(args.model, clips_dir, args.method, args.threads)
        runs = {"npy": [], "startup": [], "all": [], "one": [], "two": []}
        # Rounds alternate the runs, so a burst of load on the machine hits all of them alike;
        # every figure is the median over the rounds.
        for round_index in range(args.repeats):
            out = work / f"round{round_index}"
            common = (clips_dir, out / "npy", args.model, args.method)
            runs["npy"].append(command_seconds(common, args.threads, ["--formats", "npy"]))
            runs["startup"].append(command_seconds(common, args.threads, ["--formats", "npy"]))
            runs["all"].append(command_seconds((clips_dir, out / "all", args.model, args.method),
                                               args.threads, ["--formats", "png,gif,npy"]))
            if round_index == 0:
                runs["one"].append(command_seconds((clips_dir, out / "one", args.model, args.method),
                                                   args.threads, ["--formats", "png,gif,npy"]))
                runs["two"].append(command_seconds((clips_dir, out / "two", args.model, args.method),
                                                   args.threads, ["--formats", "png,gif,npy"],
                                                   parallel_shards=2))
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    npy, startup, everything, one, two = (statistics.median(runs[k])
                                          for k in ("npy", "startup", "all", "one", "two"))
    ratios = [a / n for a, n in zip(runs["all"], runs["npy"])]
    print(f"{args.model} / {args.method}, {count} clips, {args.threads} thread(s) per process, "
          f"median of {args.repeats} round(s)")
    print(f"  method only                     {method:8.2f} s  ({count / method:6.2f} clips/s)")
    print(f"  start-up (all clips done)       {startup:8.2f} s")
    print(f"  end to end, npy                 {npy:8.2f} s  ({count / npy:6.2f} clips/s)  "
          f"x{npy / method:5.2f} method, x{npy / (method + startup):5.2f} method + start-up"
          f"  (target <= 1.5)")
    print(f"  end to end, png,gif,npy         {everything:8.2f} s  ({count / everything:6.2f} "
          f"clips/s)  x{everything / npy:5.2f} the npy run  (target <= 1.5; per round: "
          f"{', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"  png,gif,npy: 1 process / 2      {one:8.2f} s / {two:.2f} s  (x{one / two:4.2f})")


if __name__ == "__main__":
    main()
