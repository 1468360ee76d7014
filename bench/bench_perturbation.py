"""Benchmark: extremal perturbations with the reference settings vs our default, same clips.

For every method and clip it runs

- ``reference``: the reference demo's optimiser (SGD lr 0.05, momentum/dampening 0.9, its loss
  weights and schedule) for 2000 iterations;
- ``default``: our default (Adam, compressed schedule, early stopping),

on ``demo_3dcnn`` and synthetic clips whose evidence is known, and prints the model evaluations,
the wall time, their ratios, and the quality of both masks with :mod:`utils.metrics`: pointing
game (the project's 15 px tolerance, as in ``utils.evaluate``, per frame where the evidence is
visible), deletion AUC (lower is better) and insertion AUC (higher is better; both blur the
removed voxels, 20 steps), as mean +- standard deviation over the clips. Our default passes
when it needs at least 8x fewer model evaluations and each of these mean scores is no worse
than the reference's mean minus (plus, for deletion) one standard deviation. A stricter
pointing game (15 px scaled from 224 px frames to these, 7.5 px at 112 px) is printed too,
for information.

    python bench/bench_perturbation.py                      # step, 3 clips
    python bench/bench_perturbation.py --methods step 3d_ep --num_clips 2 --json out.json
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.evaluate import model_input  # noqa: E402
from vis_methods import get_method  # noqa: E402

REFERENCE_ITERATIONS = 2000
POINTING_TOLERANCE = 15.0              # px, the project's pointing-game tolerance
POINTING_TOLERANCE_224 = 15.0          # the same, read as px at 224 px (the strict variant)


# --------------------------------------------------------------------------- data
def load_clips(clips_dir: Optional[Path], num_clips: int, seed: int, first: int = 0) -> List[dict]:
    """Synthetic clips with ground truth: ``frames (T, H, W, 3)`` uint8, ``boxes (T, 4)``,
    ``present (T,)``, ``class_index``, ``name``. Read from ``clips_dir`` when it holds clips,
    else drawn in memory with :func:`utils.synthetic.generate_clip` (deterministic in ``seed``)."""
    from utils import synthetic
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


def score_mask(model, clip_tensor: torch.Tensor, mask: torch.Tensor, clip: dict,
               strict_tolerance: float) -> dict:
    """Pointing game, deletion and insertion AUC (:mod:`utils.metrics`) of a mask ``(T, H, W)``."""
    from utils import metrics
    target = int(clip["class_index"])
    return {"pointing": metrics.pointing_game(mask, clip["boxes"], clip["present"],
                                              POINTING_TOLERANCE),
            "pointing_strict": metrics.pointing_game(mask, clip["boxes"], clip["present"],
                                                     strict_tolerance),
            "deletion": metrics.deletion(model, clip_tensor, mask, target)[0],
            "insertion": metrics.insertion(model, clip_tensor, mask, target)[0]}


# --------------------------------------------------------------------------- runs
def run_one(model, clip_tensor, target: int, method: str, setting: str, area: float,
            reference_iterations: int) -> dict:
    explain = get_method(method)
    options = dict(perturb_area=[area])
    if setting == "reference":
        options.update(ep_optimizer="reference", num_iter=reference_iterations)
    info: dict = {}
    started = time.perf_counter()
    mask = explain(model, clip_tensor, torch.tensor([target]), info=info, **options)
    seconds = time.perf_counter() - started
    return {"mask": mask[0, 0].detach(), "seconds": seconds,
            "evaluations": int(info["model_evaluations"]), "iterations": int(info["iterations"]),
            "probability": float(info["final_probability"]), "area": float(info["final_area"])}


def mean_std(values: Sequence[float]) -> tuple:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["step"],
                        choices=("2d_ep", "3d_ep", "step"))
    parser.add_argument("--num_clips", type=int, default=3)
    parser.add_argument("--clips_dir", type=Path, default=ROOT / "test_data" / "synthetic",
                        help="synthetic clips with ground_truth.json (drawn in memory if absent)")
    parser.add_argument("--first_clip", type=int, default=0, help="skip this many clips")
    parser.add_argument("--seed", type=int, default=0, help="seed of clips drawn in memory")
    parser.add_argument("--area", type=float, default=0.1)
    parser.add_argument("--reference_iterations", type=int, default=REFERENCE_ITERATIONS)
    parser.add_argument("--model", default="demo_3dcnn")
    parser.add_argument("--weights", type=Path, default=None,
                        help="checkpoint to load instead of the model's default weights")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest on a shared machine)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    from models import get_model_spec
    spec = get_model_spec(args.model)
    dataset = spec.pretrain_datasets[0]
    model = spec.load(args.weights, dataset).eval()
    clips = load_clips(args.clips_dir, args.num_clips, args.seed, args.first_clip)
    size = clips[0]["frames"].shape[1]
    tolerance = POINTING_TOLERANCE_224 * size / 224

    rows: Dict[str, Dict[str, List[dict]]] = {}
    print(f"model {args.model}, {len(clips)} clips, area {args.area}, torch threads {args.threads}")
    for clip in clips:
        clip_tensor = model_input(spec, clip["frames"])                 # (1, C, T, H, W)
        with torch.no_grad():
            probability = float(model(clip_tensor).softmax(1)[0, clip["class_index"]])
        print(f"\n{clip['name']}: p(label) = {probability:.3f}")
        for method in args.methods:
            for setting in ("reference", "default"):
                result = run_one(model, clip_tensor, clip["class_index"], method, setting,
                                 args.area, args.reference_iterations)
                mask = result.pop("mask")
                result.update(score_mask(model, clip_tensor, mask, clip, tolerance))
                rows.setdefault(method, {}).setdefault(setting, []).append(result)
                print(f"  {method:6s} {setting:9s} evals {result['evaluations']:5d}  "
                      f"{result['seconds']:7.1f} s  p {result['probability']:.3f}  "
                      f"area {result['area']:.3f}  pointing {result['pointing']:.3f} "
                      f"(strict {result['pointing_strict']:.3f})  "
                      f"deletion {result['deletion']:.3f}  insertion {result['insertion']:.3f}",
                      flush=True)

    print("\nSummary (mean +- std over clips)")
    summary = {}
    all_pass = True
    for method, settings in rows.items():
        ref, ours = settings["reference"], settings["default"]
        evals_ref = sum(r["evaluations"] for r in ref)
        evals_ours = sum(r["evaluations"] for r in ours)
        time_ref = sum(r["seconds"] for r in ref)
        time_ours = sum(r["seconds"] for r in ours)
        line = {"evaluations": (evals_ref, evals_ours, evals_ref / evals_ours),
                "seconds": (time_ref, time_ours, time_ref / time_ours)}
        checks = [evals_ref / evals_ours >= 8]
        print(f"{method}: model evaluations {evals_ref} vs {evals_ours} "
              f"({evals_ref / evals_ours:.1f}x fewer); "
              f"wall time {time_ref:.1f} s vs {time_ours:.1f} s "
              f"({time_ref / time_ours:.1f}x faster)")
        for metric, higher_is_better in (("pointing", True), ("deletion", False),
                                         ("insertion", True)):
            m_ref, s_ref = mean_std([r[metric] for r in ref])
            m_ours, s_ours = mean_std([r[metric] for r in ours])
            ok = m_ours >= m_ref - s_ref if higher_is_better else m_ours <= m_ref + s_ref
            checks.append(ok)
            line[metric] = {"reference": (m_ref, s_ref), "default": (m_ours, s_ours), "ok": ok}
            print(f"  {metric:9s} reference {m_ref:.3f} +- {s_ref:.3f}   default {m_ours:.3f} +- "
                  f"{s_ours:.3f}   {'ok' if ok else 'WORSE'}")
        m_ref, s_ref = mean_std([r["pointing_strict"] for r in ref])
        m_ours, s_ours = mean_std([r["pointing_strict"] for r in ours])
        line["pointing_strict"] = {"reference": (m_ref, s_ref), "default": (m_ours, s_ours)}
        print(f"  (pointing, strict {POINTING_TOLERANCE_224 * size / 224:.1f} px: reference "
              f"{m_ref:.3f} +- {s_ref:.3f}   default {m_ours:.3f} +- {s_ours:.3f}; not in the "
              "criterion)")
        line["pass"] = all(checks)
        all_pass &= line["pass"]
        print(f"  -> {'PASS' if line['pass'] else 'FAIL'} (>= 8x fewer evaluations, no worse "
              f"than the reference within one standard deviation)")
        summary[method] = line
    if args.json is not None:
        args.json.write_text(json.dumps({"summary": summary, "runs": rows}, indent=1))
    return 0 if all_pass else 1


if __name__ == "__main__":
    raise SystemExit(main())
