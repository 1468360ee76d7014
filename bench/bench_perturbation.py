"""Benchmark: our default extremal perturbation against the reference setting, same clips.

For every method and clip it runs

- ``reference``: ``ep_optimizer="reference"``, which reproduces the WACV 2021 demo's
  optimisation (TorchRay's full-resolution mask generator, area target on the padded mask, core
  loss with a fresh random tie-break every iteration from iteration 101, zero-padded blur, SGD,
  2000 iterations). On the first three clips its final probability and in-frame area are checked
  against the demo's own figures (``REFERENCE_MEASURED``, measured by running the demo's code);
- ``default``: our default (Adam, two starts, compressed schedule, early stopping), run at the
  in-frame area the reference setting ended with on that clip (``--match_area``, the default),
  so that both are scored at the same kept area,

on ``demo_3dcnn`` and the bundled synthetic clips, whose evidence is known, and prints per clip
and as mean +- standard deviation: model evaluations, seconds (wall and CPU), pointing game
(15 px), deletion AUC (lower is better) and insertion AUC (higher is better; utils/evaluation/metrics.py),
with the clips each setting wins. Our default passes when it needs at least 8x fewer model
evaluations and none of its mean scores is worse than the reference's.

The speed claim is given twice: as the ratio of model evaluations, and as the ratio of CPU time
per clip against the demo's own code (``REFERENCE_MEASURED``: about 0.5 s of CPU per
iteration, several times our cost per evaluation), so run ``--settings default`` on one CPU
thread for a comparable figure.

    python bench/bench_perturbation.py                              # step, all 8 clips
    python bench/bench_perturbation.py --num_clips 3 --json out.json
    python bench/bench_perturbation.py --settings default --device cpu   # timing of ours only
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from types import MappingProxyType
from typing import Dict, List, Optional, Sequence, Tuple

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.evaluation.synthetic_eval import model_input  # noqa: E402
from vis_methods import get_method  # noqa: E402

REFERENCE_ITERATIONS = 2000
POINTING_TOLERANCE = 15.0              # px, the project's pointing-game tolerance
PROBABILITY_TOLERANCE = 0.05           # reference setting vs the demo's code, per clip
AREA_TOLERANCE = 0.01                  # in-frame area, the same

# The demo's own figures: facts, measured by running the WACV 2021 demo's perturbation code
# unchanged (its video_perturbation with method "step", areas [0.1], sigma 11, 2000 iterations,
# blur, preserve; CPU, one torch thread) on demo_3dcnn (synthetic weights) and the first three
# bundled synthetic clips, on 2026-11-29: "circle moving down-s7_00003" in this project's own
# run of that code, the other two from an earlier run of the same procedure on this project.
# probability: p(label) of the clip perturbed by the final mask; area: the final mask's mean in
# the frame, and over the padded 134 x 134 mask (None: not recorded); cpu_seconds: CPU time of
# the whole 2000-iteration run (about 950 s per clip for the other two in the earlier run). The
# new run of the first clip reproduced the earlier run's figures for it (0.885 / 0.154) exactly.
REFERENCE_MEASURED = MappingProxyType({
    "step": MappingProxyType({
        "circle moving down-s7_00003": MappingProxyType(
            {"probability": 0.885, "area": 0.1536, "area_padded": 0.1075,
             "cpu_seconds": 1101.0}),                    # wall 2848 s (shared machine)
        "circle moving down-s7_00007": MappingProxyType(
            {"probability": 0.965, "area": 0.137, "area_padded": None, "cpu_seconds": 950.0}),
        "circle moving left-s7_00000": MappingProxyType(
            {"probability": 0.925, "area": 0.145, "area_padded": None, "cpu_seconds": 950.0}),
    }),
})


# --------------------------------------------------------------------------- data
def load_clips(clips_dir: Optional[Path], num_clips: int, seed: int, first: int = 0) -> List[dict]:
    """Synthetic clips with ground truth: ``frames (T, H, W, 3)`` uint8, ``boxes (T, 4)``,
    ``present (T,)``, ``class_index``, ``name``. Read from ``clips_dir`` when it holds clips,
    else drawn in memory with :func:`utils.demo.synthetic.generate_clip` (deterministic in ``seed``)."""
    from utils.demo import synthetic
    clips = []
    if clips_dir is not None and clips_dir.is_dir():
        folders = sorted(p for p in clips_dir.iterdir()
                         if (p / synthetic.GROUND_TRUTH_FILE).is_file())
        for folder in folders[first:first + num_clips]:
            truth = synthetic.load_ground_truth(folder)
            clips.append({"name": folder.name, "frames": synthetic.load_frames(folder),
                          "boxes": truth["boxes"], "present": truth["present"],
                          "class_index": truth["class_index"]})
    for index in range(first + len(clips), first + num_clips):
        clip = synthetic.generate_clip(index, seed)
        clips.append({"name": f"{clip.label}-{seed}_{index}", "frames": clip.frames,
                      "boxes": clip.boxes, "present": clip.present,
                      "class_index": clip.class_index})
    return clips


def score_mask(model, clip_tensor: torch.Tensor, mask: torch.Tensor, clip: dict) -> dict:
    """Pointing game, deletion and insertion AUC (:mod:`utils.evaluation.metrics`) of a mask ``(T, H, W)``."""
    from utils.evaluation import metrics
    target = int(clip["class_index"])
    mask = mask.float().cpu()
    return {"pointing": metrics.pointing_game(mask, clip["boxes"], clip["present"],
                                              POINTING_TOLERANCE),
            "deletion": metrics.deletion(model, clip_tensor, mask,
                                         target)[0],
            "insertion": metrics.insertion(model, clip_tensor, mask,
                                           target)[0]}


# --------------------------------------------------------------------------- runs
def run_one(model, clip_tensor, target: int, method: str, setting: str, area: float,
            reference_iterations: int) -> dict:
    explain = get_method(method)
    options = dict(perturb_area=[area])
    if setting == "reference":
        options.update(ep_optimizer="reference", num_iter=reference_iterations)
    info: dict = {}
    if clip_tensor.is_cuda:
        torch.cuda.synchronize()
    started, cpu_started = time.perf_counter(), time.process_time()
    mask = explain(model, clip_tensor, torch.tensor([target]), info=info, **options)
    if clip_tensor.is_cuda:
        torch.cuda.synchronize()
    return {"mask": mask[0, 0].detach(), "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu_started, "target_area": area,
            "evaluations": int(info["model_evaluations"]), "iterations": int(info["iterations"]),
            "probability": float(info["final_probability"]), "area": float(info["final_area"]),
            "area_padded": float(info.get("final_area_padded", float("nan")))}


def mean_std(values: Sequence[float]) -> tuple:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def wins(ours: Sequence[float], theirs: Sequence[float], higher_is_better: bool,
         tie: float = 1e-3) -> Tuple[int, int, int]:
    """Clips where ours is better, worse, and within ``tie`` of the reference's."""
    better = worse = even = 0
    for a, b in zip(ours, theirs):
        gain = (a - b) if higher_is_better else (b - a)
        if abs(gain) <= tie:
            even += 1
        elif gain > 0:
            better += 1
        else:
            worse += 1
    return better, worse, even


def check_against_measured(method: str, name: str, result: dict) -> Optional[bool]:
    """The reference setting's final probability and in-frame area against the demo's own."""
    measured = REFERENCE_MEASURED.get(method, {}).get(name)
    if measured is None:
        return None
    probability, area = measured["probability"], measured["area"]
    ok = (abs(result["probability"] - probability) <= PROBABILITY_TOLERANCE
          and abs(result["area"] - area) <= AREA_TOLERANCE)
    padded = measured["area_padded"]
    print(f"      the demo's own code: p {probability:.3f}  area {area:.3f}"
          + (f" (padded {padded:.3f})" if padded is not None else "")
          + f", {measured['cpu_seconds']:.0f} s CPU -> "
          f"dp {result['probability'] - probability:+.3f}  darea {result['area'] - area:+.3f}  "
          f"{'ok' if ok else 'OFF'} (tolerance {PROBABILITY_TOLERANCE}, {AREA_TOLERANCE})")
    return ok


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["step"],
                        choices=("2d_ep", "3d_ep", "step"))
    parser.add_argument("--settings", nargs="+", default=["reference", "default"],
                        choices=("reference", "default"))
    parser.add_argument("--num_clips", type=int, default=8)
    parser.add_argument("--clips_dir", type=Path, default=ROOT / "test_data" / "synthetic",
                        help="synthetic clips with ground_truth.json (drawn in memory if absent)")
    parser.add_argument("--first_clip", type=int, default=0, help="skip this many clips")
    parser.add_argument("--seed", type=int, default=0, help="seed of clips drawn in memory")
    parser.add_argument("--area", type=float, default=0.1,
                        help="the reference's area (of its padded mask)")
    parser.add_argument("--match_area", action=argparse.BooleanOptionalAction, default=True,
                        help="run our default at the in-frame area the reference setting "
                             "ended with on each clip (else at --area)")
    parser.add_argument("--reference_iterations", type=int, default=REFERENCE_ITERATIONS)
    parser.add_argument("--model", default="demo_3dcnn")
    parser.add_argument("--weights", type=Path, default=None,
                        help="checkpoint to load instead of the model's default weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest on a shared machine)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from models import get_model_spec
    spec = get_model_spec(args.model)
    dataset = spec.pretrain_datasets[0]
    model = spec.load(args.weights, dataset).eval().to(device)
    clips = load_clips(args.clips_dir, args.num_clips, args.seed, args.first_clip)

    rows: Dict[str, Dict[str, List[dict]]] = {}
    matches: List[bool] = []
    print(f"model {args.model}, {len(clips)} clips, area {args.area}, device {device}, "
          f"torch threads {args.threads}")
    for clip in clips:
        clip_tensor = model_input(spec, clip["frames"]).to(device)      # (1, C, T, H, W)
        with torch.no_grad():
            probability = float(model(clip_tensor).softmax(1)[0, clip["class_index"]])
        print(f"\n{clip['name']}: p(label) = {probability:.3f}")
        for method in args.methods:
            area = args.area
            for setting in args.settings:
                result = run_one(model, clip_tensor, clip["class_index"], method, setting,
                                 area, args.reference_iterations)
                mask = result.pop("mask")
                result.update(score_mask(model, clip_tensor, mask, clip), clip=clip["name"])
                rows.setdefault(method, {}).setdefault(setting, []).append(result)
                print(f"  {method:6s} {setting:9s} evals {result['evaluations']:5d}  "
                      f"{result['seconds']:7.1f} s ({result['cpu_seconds']:.1f} s CPU)  "
                      f"p {result['probability']:.3f}  area {result['area']:.3f}  "
                      f"pointing {result['pointing']:.3f}  deletion {result['deletion']:.3f}  "
                      f"insertion {result['insertion']:.3f}", flush=True)
                if setting == "reference":
                    ok = check_against_measured(method, clip["name"], result)
                    if ok is not None:
                        matches.append(ok)
                    if args.match_area:
                        area = round(result["area"], 4)

    print("\nSummary (mean +- std over clips)")
    summary: dict = {}
    all_pass = all(matches)
    if matches:
        print(f"reference setting vs the demo's own code: {sum(matches)}/{len(matches)} clips "
              f"within |dp| <= {PROBABILITY_TOLERANCE}, |d area| <= {AREA_TOLERANCE}")
    for method, settings in rows.items():
        line: dict = {}
        if "default" in settings:
            ours = settings["default"]
            cpu = statistics.fmean(r["cpu_seconds"] for r in ours)
            line["default_cpu_seconds_per_clip"] = cpu
            measured = REFERENCE_MEASURED.get(method, {})
            if measured:
                demo_cpu = statistics.fmean(m["cpu_seconds"] for m in measured.values())
                line["cpu_ratio_vs_demo"] = demo_cpu / cpu
                print(f"{method}: CPU time per clip: the demo's own code {demo_cpu:.0f} s "
                      f"(measured, {len(measured)} clips), our default {cpu:.1f} s here "
                      f"({demo_cpu / cpu:.0f}x less)")
        if "reference" not in settings or "default" not in settings:
            summary[method] = line
            continue
        ref, ours = settings["reference"], settings["default"]
        evals_ref = sum(r["evaluations"] for r in ref)
        evals_ours = sum(r["evaluations"] for r in ours)
        time_ref = sum(r["seconds"] for r in ref)
        time_ours = sum(r["seconds"] for r in ours)
        line.update({"evaluations": (evals_ref, evals_ours, evals_ref / evals_ours),
                     "seconds": (time_ref, time_ours, time_ref / time_ours)})
        checks = [evals_ref / evals_ours >= 8]
        print(f"{method}: model evaluations {evals_ref} vs {evals_ours} "
              f"({evals_ref / evals_ours:.1f}x fewer); wall time of the reference setting "
              f"{time_ref:.1f} s vs {time_ours:.1f} s ({time_ref / time_ours:.1f}x)")
        print(f"  kept area (in frame): reference {mean_std([r['area'] for r in ref])[0]:.3f}, "
              f"default {mean_std([r['area'] for r in ours])[0]:.3f}")
        for metric, higher_is_better in (("pointing", True), ("deletion", False),
                                         ("insertion", True)):
            m_ref, s_ref = mean_std([r[metric] for r in ref])
            m_ours, s_ours = mean_std([r[metric] for r in ours])
            ok = m_ours >= m_ref if higher_is_better else m_ours <= m_ref
            better, worse, even = wins([r[metric] for r in ours], [r[metric] for r in ref],
                                       higher_is_better)
            checks.append(ok)
            line[metric] = {"reference": (m_ref, s_ref), "default": (m_ours, s_ours), "ok": ok,
                            "default_wins": better, "default_losses": worse, "ties": even}
            print(f"  {metric:9s} reference {m_ref:.3f} +- {s_ref:.3f}   default {m_ours:.3f} +- "
                  f"{s_ours:.3f}   default better on {better}, worse on {worse}, even on {even} "
                  f"clips   {'ok' if ok else 'WORSE'}")
        line["pass"] = all(checks)
        all_pass &= line["pass"]
        print(f"  -> {'PASS' if line['pass'] else 'FAIL'} (>= 8x fewer evaluations, no mean "
              "score worse than the reference's)")
        summary[method] = line
    if args.json is not None:
        from utils.io.atomic import atomic_path
        with atomic_path(args.json) as path:
            Path(path).write_text(json.dumps({"summary": summary, "runs": rows}, indent=1))
    return 0 if all_pass else 1


if __name__ == "__main__":
    raise SystemExit(main())
