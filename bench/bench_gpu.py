"""Clips per second on a GPU, in one run.

1. The method alone (clips already on the device; I3D with random weights: speed does not
   depend on them): Grad-CAM at 1, 8 and 32 clips per batch, integrated gradients (25 steps)
   and STEP at its default settings, float32 and bf16. Grad-CAM here is the model-only figure.
2. With ``--pipeline_clips N``: the whole command (``main.py --model i3d --vis_method
   grad_cam``, real weights) over a folder of N clips (links to the clips of ``--clips_dir``
   under new names), ``--formats npy`` and ``--formats png,gif,npy``, batch 8 and 32, float32
   and bf16; clips/s net of the start-up (the same command over the finished folder), and the
   ratios the speed targets name: NPY-only / model-only, all formats / NPY-only.

Order: Grad-CAM, then the whole command (2.), then integrated gradients and STEP. Prints one
line per setting (its name before it starts, so a stall shows where) and writes JSON to
$OUT/gpu.json when OUT is set, after every setting.

    python bench/bench_gpu.py
    python bench/bench_gpu.py --pipeline_clips 512 --clips_dir test_data/kinetics
"""
import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models.adapter import ModelAdapter  # noqa: E402
from models.i3d import InceptionI3d  # noqa: E402
from vis_methods import explain  # noqa: E402


ROOT = Path(__file__).resolve().parent.parent


def clip_folder(source: Path, count: int, into: Path) -> Path:
    """``count`` links to the clip folders of ``source`` in turn, each under its own name."""
    clips = sorted(p for p in source.iterdir() if p.is_dir())
    into.mkdir(parents=True)
    for i in range(count):
        clip = clips[i % len(clips)]
        (into / f"{clip.name}-copy{i:04d}").symlink_to(clip.resolve(), target_is_directory=True)
    return into


def command_seconds(clips: Path, out: Path, *extra: str) -> float:
    command = [sys.executable, str(ROOT / "main.py"), "--videos_dir", str(clips), "--out_dir",
               str(out), "--model", "i3d", "--vis_method", "grad_cam", "--quiet", *extra]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    return time.perf_counter() - started


def pipeline(results: dict, source: Path, count: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="vv-gpu-"))
    try:
        clips = clip_folder(source, count, work / "clips")
        for batch in (8, 32):
            for precision in ("float32", "bf16"):
                model_only = results[f"grad_cam batch {batch} "
                                     f"{'fp32' if precision == 'float32' else 'bf16'}"]
                rates = {}
                for formats in ("npy", "png,gif,npy"):
                    out = work / f"out-{batch}-{precision}-{formats.replace(',', '')}"
                    extra = ("--formats", formats, "--batch_size", str(batch),
                             "--precision", precision)
                    wall = command_seconds(clips, out, *extra)
                    startup = command_seconds(clips, out, *extra)   # every clip done
                    rates[formats] = count / max(wall - startup, 1e-9)
                    name = f"pipeline {formats} batch {batch} {precision}"
                    results[name] = {"clips_per_s": round(rates[formats], 1),
                                     "wall_s": round(wall, 2), "startup_s": round(startup, 2)}
                    print(f"{name:40s} {rates[formats]:8.1f} clips/s (wall {wall:.1f} s, "
                          f"start-up {startup:.1f} s)", flush=True)
                    shutil.rmtree(out, ignore_errors=True)
                npy_share = rates["npy"] / model_only
                all_share = rates["png,gif,npy"] / rates["npy"]
                results[f"ratios batch {batch} {precision}"] = {
                    "npy_over_model_only": round(npy_share, 3),
                    "all_formats_over_npy": round(all_share, 3)}
                print(f"  batch {batch} {precision}: NPY-only / model-only {npy_share:.2f} "
                      f"(target >= 0.8), all formats / NPY-only {all_share:.2f} "
                      f"(target >= 0.5)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline_clips", type=int, default=0)
    parser.add_argument("--clips_dir", type=Path, default=ROOT / "test_data" / "kinetics")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    adapter = ModelAdapter(InceptionI3d().cuda().eval(), mean=(0.5,) * 3, std=(0.5,) * 3,
                           target_layer="Mixed_5c")
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "cpu_cores": len(os.sched_getaffinity(0))}

    def save():
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], "gpu.json").write_text(json.dumps(results, indent=1))

    def bench(name, method, batch, precision, repeats, **options):
        print(f"{name:40s} ", end="", flush=True)      # a stall shows where it is
        clips = torch.randn(batch, 3, 16, 224, 224, device="cuda")
        targets = torch.randint(0, 400, (batch,), device="cuda")
        if precision == "bf16":
            clips = clips.contiguous(memory_format=torch.channels_last_3d)
        context = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if precision == "bf16" \
            else contextlib.nullcontext
        with context():
            explain(method, adapter, clips, targets, **options)            # warm-up
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            with context():
                explain(method, adapter, clips, targets, **options)
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - started) / repeats
        results[name] = round(batch / seconds, 2)
        print(f"{batch / seconds:8.2f} clips/s", flush=True)

    print(f"{results['device']}, torch {results['torch']}, {results['cpu_cores']} cores",
          flush=True)

    for batch in (1, 8, 32):
        for precision in ("fp32", "bf16"):
            bench(f"grad_cam batch {batch} {precision}", "grad_cam", batch, precision, 3)
    save()
    # The whole command next, before the slower methods: on an earlier GPU run integrated
    # gradients at 4 clips per batch stalled, and the device time ran out before this part.
    if args.pipeline_clips:
        pipeline(results, args.clips_dir, args.pipeline_clips)
        save()
    for batch, inner in ((1, 25), (4, 8)):
        for precision in ("fp32", "bf16"):
            bench(f"integrated_grad 25 steps batch {batch} {precision}", "integrated_grad",
                  batch, precision, 1, num_iter=25, internal_batch_size=inner * batch)
            save()
    for batch in (1, 8):
        for precision in ("fp32", "bf16"):
            bench(f"step default settings batch {batch} {precision}", "step", batch, precision, 1)
            save()


if __name__ == "__main__":
    main()
