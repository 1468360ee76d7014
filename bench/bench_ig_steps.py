"""Integrated gradients: completeness gap and time against the number of steps and the rule.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 python bench/bench_ig_steps.py --threads 1 --large_clips 2 --csv ig.csv
    python bench/bench_ig_steps.py --summary_from ig.csv

On the bundled Kinetics clips (``test_data/kinetics``) with I3D, as the command line reads
them (frames decoded at the model's size, centre crop, the adapter's normalisation, the class
named by the clip's folder), this runs integrated gradients with the command line's baseline
(``black``) for

- the reference setting: 25 steps, ``riemann_left`` (the default until this measurement), and
- every rule of ``--rules`` at every count of ``--steps``,

and prints per clip and setting the relative completeness gap
``|sum(attribution) - (f(clip) - f(baseline))| / |f(clip) - f(baseline)|`` (the
``completeness_relative`` diagnostic of :func:`vis_methods.gradient.integrated_grad`) and the
seconds taken. The summary names, for each rule, the smallest step count whose gap is no larger
than the reference's on every clip it ran on, and the smallest whose mean gap is no larger than
the reference's mean gap over the same clips. ``--large_clips N`` runs the step counts above
``--large_from`` on the first N clips only. ``--csv FILE`` also writes every row (atomically);
``--summary_from FILE`` prints the summary of such a file again.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models import get_model_spec  # noqa: E402
from utils.io.labels import parse_label  # noqa: E402
from utils.io.atomic import atomic_path  # noqa: E402
from utils.io.clips import ClipSource, load_frames, preprocess  # noqa: E402
from vis_methods import explain  # noqa: E402

REFERENCE = ("riemann_left", 25)
Setting = Tuple[str, int]


def load_clips(folder: Path, spec, adapter, limit: Optional[int]) -> List[dict]:
    """The clips of ``folder`` as the command line reads them, with their label's index."""
    class_names = list(spec.class_names(spec.pretrain_datasets[0]))
    clips = []
    for path in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        frames, _ = load_frames(ClipSource(path, False), adapter.clip_length, resize=adapter.resize)
        rgb = preprocess(frames, adapter.resize, adapter.crop)
        label = parse_label(path.name, class_names)
        if label is None:
            raise SystemExit(f"no class name starts the clip name {path.name!r}")
        clips.append({"name": path.name, "label": label, "target": class_names.index(label),
                      "tensor": adapter.normalize(rgb).unsqueeze(0)})
        if limit and len(clips) == limit:
            break
    return clips


def run_setting(adapter, clip: dict, rule: str, steps: int, baseline: str,
                clock: str = "wall") -> Tuple[float, float]:
    """``(relative completeness gap, seconds)`` of one integrated-gradients run; seconds of wall
    time, or of this process's CPU time (``clock="cpu"``)."""
    timer = time.perf_counter if clock == "wall" else time.process_time
    start = timer()
    result = explain("integrated_grad", adapter, clip["tensor"], clip["target"], num_iter=steps,
                     ig_integration=rule, ig_baseline=baseline, internal_batch_size=1)
    seconds = timer() - start
    return float(result.diagnostics[0]["completeness_relative"]), seconds


def smallest_matching(gaps: Dict[Setting, Dict[str, float]], rule: str, counts: List[int]
                      ) -> Tuple[Optional[int], Optional[int]]:
    """Smallest step count of ``rule`` whose gap is no larger than the reference's on every clip
    it ran on, and on the mean over those clips."""
    per_clip = on_mean = None
    reference = gaps[REFERENCE]
    for count in sorted(counts):
        measured = gaps.get((rule, count), {})
        if not measured:
            continue
        if per_clip is None and all(measured[n] <= reference[n] for n in measured):
            per_clip = count
        if on_mean is None and (statistics.mean(measured.values())
                                <= statistics.mean(reference[n] for n in measured)):
            on_mean = count
    return per_clip, on_mean


def print_summary(gaps: Dict[Setting, Dict[str, float]], times: Dict[Setting, List[float]],
                  names: List[str], rules: List[str], counts: List[int]) -> None:
    """The table of gaps per clip and setting, and the smallest settings matching the
    reference."""
    print("\nrelative completeness gap per clip; mean over the clips run, the reference's mean "
          "over the same clips, seconds per clip")
    header = "  ".join(f"{n[:14]:>14s}" for n in names)
    print(f"{'setting':22s} {header}  {'mean':>7s}  {'ref.':>7s}  {'s/clip':>6s}")
    for setting in [REFERENCE] + [(r, n) for n in counts for r in rules if (r, n) != REFERENCE]:
        measured = gaps.get(setting)
        if not measured:
            continue
        cells = "  ".join(f"{measured[n]:14.4f}" if n in measured else f"{'-':>14s}"
                          for n in names)
        reference_mean = statistics.mean(gaps[REFERENCE][n] for n in measured)
        print(f"{setting[0] + ' ' + str(setting[1]):22s} {cells}  "
              f"{statistics.mean(measured.values()):7.4f}  {reference_mean:7.4f}  "
              f"{statistics.mean(times[setting]):6.1f}")
    print()
    for rule in rules:
        per_clip, on_mean = smallest_matching(gaps, rule, counts)
        print(f"{rule}: smallest step count with a gap <= the reference's on every clip it ran on: "
              f"{per_clip}; on the mean over those clips: {on_mean}")


def summarise_csv(path: Path, rules: List[str], counts: List[int]) -> None:
    gaps: Dict[Setting, Dict[str, float]] = {}
    times: Dict[Setting, List[float]] = {}
    names: List[str] = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            setting = (row["rule"], int(row["steps"]))
            gaps.setdefault(setting, {})[row["clip"]] = float(row["completeness_relative"])
            times.setdefault(setting, []).append(float(row["seconds"]))
            if row["clip"] not in names:
                names.append(row["clip"])
    print_summary(gaps, times, names, rules, counts)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="i3d")
    parser.add_argument("--clips_dir", type=Path, default=ROOT / "test_data" / "kinetics")
    parser.add_argument("--clips", type=int, default=None, help="use only the first N clips")
    parser.add_argument("--large_clips", type=int, default=None,
                        help="run step counts above --large_from on the first N clips only")
    parser.add_argument("--large_from", type=int, default=8)
    parser.add_argument("--rules", default="gausslegendre,riemann_trapezoid")
    parser.add_argument("--steps", default="4,6,8,12,16,25")
    parser.add_argument("--baseline", default="black", help="ig_baseline (CLI default: black)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                        help="wall time, or process CPU time on a machine shared with other jobs")
    parser.add_argument("--csv", type=Path, default=None, help="also write every row here")
    parser.add_argument("--summary_from", type=Path, default=None,
                        help="print the summary of a --csv file written earlier; run nothing")
    args = parser.parse_args(argv)
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    counts = [int(s) for s in args.steps.split(",") if s.strip()]
    if args.summary_from:
        summarise_csv(args.summary_from, rules, counts)
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = get_model_spec(args.model)
    adapter = spec.adapter(spec.load(None, spec.pretrain_datasets[0]))
    clips = load_clips(args.clips_dir, spec, adapter, args.clips)
    names = [c["name"] for c in clips]
    settings: List[Setting] = [REFERENCE] + [(r, n) for n in counts for r in rules
                                             if (r, n) != REFERENCE]
    print(f"{args.model}, {len(clips)} clips, baseline {args.baseline}, "
          f"{torch.get_num_threads()} threads; reference {REFERENCE[1]} steps {REFERENCE[0]}",
          flush=True)
    gaps: Dict[Setting, Dict[str, float]] = {}
    times: Dict[Setting, List[float]] = {}
    rows = []
    for rule, steps in settings:
        large = (args.large_clips is not None and steps > args.large_from
                 and (rule, steps) != REFERENCE)
        for clip in clips[:args.large_clips] if large else clips:
            gap, seconds = run_setting(adapter, clip, rule, steps, args.baseline, args.clock)
            gaps.setdefault((rule, steps), {})[clip["name"]] = gap
            times.setdefault((rule, steps), []).append(seconds)
            rows.append({"clip": clip["name"], "label": clip["label"], "rule": rule,
                         "steps": steps, "completeness_relative": gap, "seconds": seconds})
            print(f"  {clip['name'][:36]:36s} {rule:18s} {steps:3d} steps  gap {gap:9.5f}"
                  f"  {seconds:7.1f}s", flush=True)

    print_summary(gaps, times, names, rules, counts)
    if args.csv:
        with atomic_path(args.csv) as temporary, open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
