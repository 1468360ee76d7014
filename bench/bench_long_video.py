"""Benchmark of windowed runs over long videos (``--window`` / ``--stride``), with ground truth.

Prints, for each model:

- per-window accuracy: the window's top class against the class covering most of the window;
- boundary error: for each true class boundary, the distance in seconds to the nearest change
  of the top class between consecutive windows (mean, median, max; a boundary the prediction
  never marks counts as the distance to the nearest change anywhere);
- throughput as a multiple of real time (video seconds per wall second) of the windows
  (decode, forward for the probabilities, Grad-CAM) and of the whole-video MP4 pass;
- with ``--rss``: peak resident memory of ``main.py --window`` on synthetic 1080p videos of
  growing length (25 fps, a few repeated frames at low bitrate) and on a one-hour 1080p video
  at 1 fps, each in its own process.

demo_3dcnn runs on synthetic clips (class = motion direction) joined into one MP4; I3D on the
Kinetics clips of ``--kinetics`` joined end to end in a frame folder (their frames are taken as
25 fps). ``--device cuda`` runs the models on a GPU (the
``--rss`` runs stay on the CPU).

    python bench/bench_long_video.py                        # demo_3dcnn and I3D
    python bench/bench_long_video.py --skip_i3d --rss 1,3
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models import get_model_spec  # noqa: E402
from utils.demo.long_video import (Segment, boundary_errors, joined_frames,  # noqa: E402
                                   predicted_changes, window_truth)
from utils.io.clips import ClipSource, frame_files  # noqa: E402
from utils.io.stream import Span  # noqa: E402
from utils.pipeline.settings import RunSettings  # noqa: E402
from utils.pipeline.setup import load_model  # noqa: E402
from utils.pipeline.windows import WindowSettings, _Model, run_video  # noqa: E402
from utils.render.encoders import Mp4Writer  # noqa: E402


def _adapter(name: str, dataset: str, device: torch.device):
    spec = get_model_spec(name)
    names = spec.class_names(dataset)
    return load_model(spec, None, dataset, device, names, None), names


def _score(name, source, segments, fps, window, stride, out, batch_size,
           device: torch.device) -> None:
    adapter, names = _adapter(name, "synthetic" if name.startswith("demo") else "kinetics",
                              device)
    settings = RunSettings(methods=("grad_cam",), model_name=name, out_dir=out, target="pred",
                           progress=False, method_options={"grad_cam": {}}, overwrite=True)
    duration = segments[-1].stop / fps
    for stride_frames in stride:
        folder = out / f"{name}_s{stride_frames}"
        model = _Model(adapter, settings, names, device, adapter.clip_length)
        plan = WindowSettings(Span(window, False), Span(stride_frames, False), fps, video=False)
        started = time.perf_counter()
        result = run_video(source, "long", model, settings, plan, names, folder,
                           batch_size=batch_size)
        windows_s = time.perf_counter() - started
        table = pd.DataFrame(result.rows)
        truth = [window_truth(segments, a, b) for a, b in zip(table["start_frame"],
                                                              table["stop_frame"])]
        accuracy = float(np.mean(table["top1"].to_numpy() == np.array(truth)))
        changes = predicted_changes(table["start_s"], table["end_s"], list(table["top1"]))
        bounds = [s.start / fps for s in segments[1:]]
        errors = np.array(boundary_errors(bounds, changes))
        print(f"{name}: window {window} frames ({window / fps:.2f} s), stride {stride_frames}: "
              f"{len(table)} windows, per-window accuracy {accuracy:.3f} "
              f"({int(round(accuracy * len(table)))}/{len(table)}); boundary error over "
              f"{len(bounds)} boundaries: mean {np.nanmean(errors):.3f} s, median "
              f"{np.nanmedian(errors):.3f} s, max {np.nanmax(errors):.3f} s "
              f"({len(changes)} predicted changes)")
        print(f"  windows (decode + forward + Grad-CAM, batch {batch_size}): {windows_s:.1f} s "
              f"for {duration:.2f} s of video = {duration / windows_s:.2f}x real time")
    plan = WindowSettings(Span(window, False), Span(stride[-1], False), fps, video=True)
    model = _Model(adapter, settings, names, device, adapter.clip_length)
    started = time.perf_counter()
    run_video(source, "long", model, settings, plan, names, out / f"{name}_video",
              batch_size=batch_size)
    both = time.perf_counter() - started
    print(f"  stride {stride[-1]}, windows + timeline CSV/PNG + whole-video MP4: {both:.1f} s = "
          f"{duration / both:.2f}x real time")


def synthetic_video(path: Path, count: int, fps: float, seed: int) -> list:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(32, 49, count)
    clips, segments = joined_frames(lengths, seed)
    with Mp4Writer(path, fps, crf=12) as writer:
        for frames in clips:
            for frame in frames:
                writer.write(frame)
    return segments


def kinetics_folder(clips_dir: Path, folder: Path) -> list:
    """The clips' frames one after the other in ``folder``, clips ordered so that neighbours
    differ in class; returns the segments."""
    clips = sorted(p for p in clips_dir.iterdir() if p.is_dir())
    by_class = {}
    for clip in clips:
        by_class.setdefault(clip.name.split("-")[0], []).append(clip)
    order = []
    while any(by_class.values()):
        for label in sorted(by_class):
            if by_class[label]:
                order.append(by_class[label].pop(0))
    folder.mkdir(parents=True)
    segments, index = [], 0
    for clip in order:
        start = index
        for frame in frame_files(clip):
            os.symlink(frame.resolve(), folder / f"{index:06d}{frame.suffix}")
            index += 1
        segments.append(Segment(clip.name.split("-")[0], start, index))
    return segments


def write_hd_video(path: Path, seconds: float, fps: float) -> None:
    """A 1920x1080 H.264 video of ``seconds`` at ``fps``: four moving-square frames repeated,
    at a low bitrate (small on disk, quick to write)."""
    import av

    pictures = []
    for k in range(4):
        frame = np.full((1080, 1920, 3), 40 + 30 * k, np.uint8)
        frame[300 + 40 * k:600 + 40 * k, 500 + 200 * k:800 + 200 * k] = (230, 60, 60)
        pictures.append(av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(
            format="yuv420p"))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "40"}
        for i in range(int(round(seconds * fps))):
            frame = pictures[(i // 4) % 4]
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def peak_rss(command) -> tuple:
    """``(peak RSS in MiB, wall seconds, exit code)`` of ``command`` in its own process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024, time.perf_counter() - started, process.returncode


def rss(minutes, workdir: Path, window: str) -> None:
    cases = [(m * 60.0, 25.0) for m in minutes] + [(3600.0, 1.0)]
    for seconds, fps in cases:
        path = workdir / f"hd_{int(seconds)}s_{fps:g}fps.mp4"
        started = time.perf_counter()
        write_hd_video(path, seconds, fps)
        made = time.perf_counter() - started
        out = workdir / f"out_{path.stem}"
        command = [sys.executable, "main.py", "--videos_dir", str(path), "--model",
                   "demo_3dcnn", "--no_gpu", "--window", window, "--out_dir", str(out),
                   "--quiet", "--target", "pred"]
        mib, wall, code = peak_rss(command)
        windows = len(pd.read_csv(next(out.rglob("*_timeline.csv")))) if code == 0 else 0
        print(f"1080p {seconds / 60:.0f} min at {fps:g} fps ({int(seconds * fps)} frames, "
              f"{path.stat().st_size / 2 ** 20:.1f} MiB, made in {made:.0f} s): peak RSS "
              f"{mib:.0f} MiB, {windows} windows, {wall:.0f} s wall "
              f"({seconds / wall:.1f}x real time), exit {code}")
        shutil.rmtree(out, ignore_errors=True)
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--segments", type=int, default=12)
    parser.add_argument("--kinetics", type=Path, default=Path("/work/shared/data/kinetics_frames"))
    parser.add_argument("--skip_i3d", action="store_true")
    parser.add_argument("--skip_demo", action="store_true")
    parser.add_argument("--rss", default="", help="comma list of minutes at 25 fps 1080p "
                                                  "(plus one hour at 1 fps)")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'} "
          f"({torch.get_num_threads()} CPU threads)")
    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        if not args.skip_demo:
            path = temp / "joined.mp4"
            segments = synthetic_video(path, args.segments, 25.0, seed=11)
            _score("demo_3dcnn", ClipSource(path, True), segments, 25.0, 16, (16, 8),
                   temp / "demo", args.batch_size, device)
        if not args.skip_i3d:
            folder = temp / "kinetics_joined"
            segments = kinetics_folder(args.kinetics, folder)
            _score("i3d", ClipSource(folder, False), segments, 25.0, 16, (16, 8),
                   temp / "i3d", args.batch_size, device)
        if args.rss:
            rss([float(m) for m in args.rss.split(",")], temp, "16")


if __name__ == "__main__":
    main()
