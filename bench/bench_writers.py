"""Benchmark: writing throughput against the number of writer processes, with a near-free model.

The clips' maps are computed first (``demo_3dcnn`` gradients: milliseconds per clip), then the
same finished clips are drawn and written (PNG, GIF, NPY) by the pipeline's writer processes,
as the runner hands them over, with 1, 2, ... processes; and by the two writer threads of a
run without processes. The pool is started and every process has written one clip before the
clock starts (start-up is a one-off per run, measured by ``bench_pipeline.py``). Rounds
alternate the settings so a burst of load on a shared machine hits all alike; figures are
medians.

Target (2-core development machine): 2 processes write at least 1.7x the clips/s of 1.

    python bench/bench_writers.py                       # 1 and 2 processes, 48 clips
    python bench/bench_writers.py --processes 1,2,4,8 --num_clips 128
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models import get_model_spec  # noqa: E402
from utils.io.clips import find_clips  # noqa: E402
from utils.io.paths import clip_ids, output_dir  # noqa: E402
from utils.pipeline import runner  # noqa: E402
from utils.pipeline.settings import RunSettings  # noqa: E402
from utils.pipeline.stages import compute_clips, finish_clip, read_clip  # noqa: E402
from utils.render import figures  # noqa: E402
from vis_methods import check_options  # noqa: E402


def computed_clips(clips_dir: Path, settings: RunSettings):
    spec = get_model_spec("demo_3dcnn")
    dataset = spec.pretrain_datasets[0]
    names = spec.class_names(dataset)
    adapter = spec.adapter(spec.load(None, dataset).eval(), names)
    sources = find_clips(clips_dir)
    works = []
    for source, clip_id in zip(sources, clip_ids(sources)):
        clip = read_clip(source, clip_id, adapter, adapter.clip_length, torch.device("cpu"))
        works += compute_clips([clip], adapter, settings, names)
    return works, adapter.name


def timed_processes(count: int, works, name, settings, folders, details: dict) -> float:
    pool = runner.writer_processes(count)
    job = runner.WriteJob(name, settings, dict(folders))
    try:
        for future in [pool.submit(runner.write_in_process, runner.for_writer(works[i]), job)
                       for i in range(count)]:
            future.result()                     # every process started and warm
        started, parent = time.perf_counter(), time.process_time()
        futures = [pool.submit(runner.write_in_process, runner.for_writer(w), job) for w in works]
        per_clip = []
        for future in futures:
            rows, seconds, error, _ = future.result()
            if error is not None:
                raise SystemExit(f"a clip failed: {error}")
            per_clip.append(seconds)
        wall = time.perf_counter() - started
        # Where the time goes: a writer's wall time per clip grows when the processes share
        # too few cores; the main process's CPU per clip is the hand-over's cost.
        details.setdefault(count, []).append(
            (statistics.median(per_clip), (time.process_time() - parent) / len(works)))
        return wall
    finally:
        pool.shutdown(wait=True)


def timed_threads(works, name, settings, folders) -> float:
    fonts = figures.Typesetter()
    with ThreadPoolExecutor(runner.WRITER_THREADS) as pool:
        finish_clip(works[0], name, settings, folders, None, fonts)
        started = time.perf_counter()
        for future in [pool.submit(finish_clip, w, name, settings, folders, None, fonts)
                       for w in works]:
            future.result()
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--num_clips", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--formats", default="png,gif,npy")
    parser.add_argument("--seed", type=int, default=4242)
    args = parser.parse_args()
    torch.set_num_threads(1)
    counts = [int(c) for c in args.processes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="vv-writers-"))
    try:
        from utils.demo.synthetic import SyntheticConfig, write_dataset
        write_dataset(work / "clips", args.num_clips, args.seed, SyntheticConfig(),
                      image_format="jpg")
        settings = RunSettings(methods=("grad",), model_name="demo_3dcnn", out_dir=work / "out",
                               formats=tuple(args.formats.split(",")), progress=False,
                               method_options={"grad": check_options("grad", {})})
        works, name = computed_clips(work / "clips", settings)
        times = {c: [] for c in counts}
        details: dict = {}
        times["threads"] = []
        for round_index in range(args.repeats):
            for key in times:
                folders = {"grad": output_dir(work / f"out-{key}-{round_index}", "grad",
                                              "demo_3dcnn", None)}
                folders["grad"].mkdir(parents=True)
                if key == "threads":
                    times[key].append(timed_threads(works, name, settings, folders))
                else:
                    times[key].append(timed_processes(key, works, name, settings, folders,
                                                      details))
                shutil.rmtree(folders["grad"].parent.parent, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    count = len(works)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"writing {count} clips ({args.formats}, 112 px), {runner.free_cores()} cores, "
          f"median of {args.repeats} round(s), load average at the end {load:.1f}")
    base = statistics.median(times[counts[0]])
    for key, values in times.items():
        seconds = statistics.median(values)
        label = "2 threads, 1 process" if key == "threads" else f"{key} writer process(es)"
        print(f"  {label:<24} {count / seconds:7.1f} clips/s  (x{base / seconds:4.2f} the "
              f"{counts[0]}-process figure; per round "
              f"{', '.join(f'{count / v:.1f}' for v in values)})")
        if key in details:
            writer_ms = statistics.median(d[0] for d in details[key]) * 1e3
            parent_ms = statistics.median(d[1] for d in details[key]) * 1e3
            print(f"  {'':<24} a writer's wall time per clip {writer_ms:5.1f} ms, the main "
                  f"process's CPU per clip {parent_ms:4.1f} ms")


if __name__ == "__main__":
    main()
