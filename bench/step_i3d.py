"""STEP on I3D: the reference demo's own code against ours, clip by clip, in one run.

Needs a checkout of the reference demo (github.com/shinkyo0513/Video-Visual-Explanations; not
part of this project) and TorchRay. Its ``video_perturbation`` runs unchanged, in a child
process, with our I3D port (real Kinetics-400 weights) as the network, at its defaults for
224-px input (``method='step'``, ``areas=[0.1]``, sigma 23, blur, preserve), on every clip of
``--clips_dirs`` (target: I3D's top-1) and on ``--splices`` spliced clips (the first half of
one clip and the second half of a clip of another class, or the other way round; target: the
class of the clip I3D got right). Then, on the same inputs:

- ours with ``ep_optimizer="reference"`` at the same iterations and area (the final p and
  in-frame area must match the reference's within 0.05 and 0.01);
- our default STEP, clip by clip, asked for the reference's final in-frame area of that clip.

Every mask is scored the same way: the kept region's probability (the clip blurred outside
the mask with the reference's 8-level pyramid, max blur 20 px), in-frame area, deletion and
insertion (10 steps, blurred with sigma 20 px or faded to zeros), and on the spliced clips the
share of the mask on the target's half and whether its top frame is there. Writes
``step_i3d.json`` into ``--out``.

    python bench/step_i3d.py --reference_repo ../Video-Visual-Explanations --device cuda
    python bench/step_i3d.py --reference_repo REPO --iterations 50 --clips 1 --splices 0 --device cpu
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models import get_model_spec  # noqa: E402

MAX_BLUR = 20.0
LEVELS = 8


def i3d(device: torch.device):
    spec = get_model_spec("i3d")
    dataset = spec.pretrain_datasets[0]
    adapter = spec.adapter(spec.load(None, dataset)).to(device).eval()
    return spec, dataset, adapter


# ----------------------------------------------------------------------- the reference's code
def reference_worker(work: Path, repo: Path, iterations: int, device: torch.device) -> None:
    """Child process: the reference's ``video_perturbation`` on ``work/inputs.pt``."""
    # The reference imports its own top-level ``utils`` (a folder without __init__.py), which
    # our ``utils`` package would shadow: bind the name to its folder before importing it.
    shim = types.ModuleType("utils")
    shim.__path__ = [str(repo / "utils")]
    sys.modules["utils"] = shim
    sys.path.insert(0, str(repo))
    from visual_meth.perturbation import video_perturbation  # the reference's, unchanged
    data = torch.load(work / "inputs.pt")
    _, _, adapter = i3d(device)
    x, target = data["x"].to(device), data["target"].to(device)
    printed = io.StringIO()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started, cpu_started = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(printed):
        masks, _ = video_perturbation(adapter, x, target, method="step", areas=[0.1], sigma=23,
                                      max_iter=iterations, variant="preserve",
                                      perturb_type="blur", print_iter=50)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    # Its progress lines: "[0051/2000]" then one " [area:.. preserve:p/label]" per clip.
    progress, current = [], None
    for line in printed.getvalue().splitlines():
        step = re.match(r"\[(\d+)/\d+\]", line.strip())
        if step:
            current = {"iteration": int(step.group(1)), "p": []}
            progress.append(current)
        found = re.search(r"preserve:([0-9.]+)/", line)
        if found and current is not None:
            current["p"].append(float(found.group(1)))
    torch.save({"masks": masks.detach().cpu()[:, 0], "seconds": seconds, "cpu_seconds": cpu,
                "progress": progress}, work / "reference.pt")


# --------------------------------------------------------------------------------- scoring
def scorer(adapter, x: torch.Tensor, target: int, on_a):
    """``score(mask) -> dict`` for one clip; the blur pyramid and the deletion/insertion
    replacements are made once per clip, for every mask scored on it."""
    from utils.evaluation import metrics
    from utils.evaluation.real_eval import splice_scores
    from vis_methods.perturbation import reference_blur_pyramid, reference_perturb
    _, c, t, h, w = x.shape
    with torch.no_grad():
        pyramid = reference_blur_pyramid(x, LEVELS, MAX_BLUR)
    replacements = {"blur": metrics.gaussian_blur_frames(x, 20.0), "fade": torch.zeros_like(x)}

    def score(mask: torch.Tensor) -> dict:
        mask = mask.float()
        with torch.no_grad():
            frames = reference_perturb(pyramid, mask.reshape(t, 1, h, w).to(x.device))
            kept = frames.view(1, t, c, h, w).transpose(1, 2)
            p = float(torch.softmax(adapter(kept), dim=1)[0, target])
        row = {"p": p, "area": float(mask.mean())}
        relevance = mask.cpu().numpy()
        for game, function in (("deletion", metrics.deletion), ("insertion", metrics.insertion)):
            for mode in ("blur", "fade"):
                row[f"{game}_{mode}"] = function(adapter, x, relevance, target, 10, mode,
                                                 replacements[mode], seed=0)[0]
        if on_a is not None:
            row["share_on_target_half"], row["top_frame_on_target_half"] = splice_scores(
                relevance, on_a)
        return row

    return score


def synced(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference_repo", type=Path, required=True)
    parser.add_argument("--clips_dirs", type=Path, nargs="+", default=None,
                        help="frame folders (default: real_eval's, the shared Kinetics frames "
                             "then test_data/kinetics)")
    parser.add_argument("--clips", type=int, default=None, help="use only the first N clips")
    parser.add_argument("--splices", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--crop", type=int, default=None,
                        help="input side (default: the model's 224; smaller only to try the script)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("visual_res/step_i3d"))
    parser.add_argument("--concurrent", action="store_true",
                        help="run the reference's code and ours at the same time")
    parser.add_argument("--one_area", action="store_true",
                        help="our default on the whole batch at the mean of the reference's areas")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the result here (rows as they are scored)")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.worker is not None:
        reference_worker(args.worker, args.reference_repo.resolve(), args.iterations, device)
        return
    from utils.evaluation.real_eval import (default_clip_dirs, load_real_clips, splice,
                                            splice_units)
    from vis_methods import explain
    if not (args.reference_repo / "visual_meth" / "perturbation.py").is_file():
        parser.error(f"{args.reference_repo} is not a checkout of the reference demo")
    args.out.mkdir(parents=True, exist_ok=True)
    spec, dataset, adapter = i3d(device)
    names = list(spec.class_names(dataset))
    crop = args.crop or spec.crop
    clips = load_real_clips(args.clips_dirs or default_clip_dirs(), names, spec.clip_length,
                            round(crop * spec.resize / spec.crop), crop)[:args.clips]
    inputs = [adapter.normalize(c.rgb.unsqueeze(0)).to(device) for c in clips]
    with torch.no_grad():
        top = [int(adapter(x).argmax()) for x in inputs]
    labels = [names.index(c.label) for c in clips]
    items = [{"clip": c.name, "label": c.label, "target": names[t], "on_a": None}
             for c, t in zip(clips, top)]
    targets = list(top)
    anchors = [i for i in range(len(clips)) if top[i] == labels[i]]
    frames = inputs[0].shape[2]
    cut = frames // 2
    for a, b, a_first in splice_units(clips, anchors, 0)[:args.splices]:
        rgb = (splice(clips[a].rgb, clips[b].rgb, cut) if a_first
               else splice(clips[b].rgb, clips[a].rgb, cut))
        inputs.append(adapter.normalize(rgb.unsqueeze(0)).to(device))
        targets.append(labels[a])
        on_a = np.arange(frames) < cut if a_first else np.arange(frames) >= cut
        items.append({"clip": f"{clips[a].name} {'+' if a_first else '<-'} {clips[b].name}",
                      "label": clips[a].label, "target": clips[a].label, "on_a": on_a})
    x = torch.cat(inputs)
    target = torch.tensor(targets, device=device)
    torch.save({"x": x.cpu(), "target": target.cpu()}, args.out / "inputs.pt")
    print(f"{len(clips)} clips and {len(inputs) - len(clips)} spliced clips; "
          f"{args.iterations} iterations; {device}", flush=True)

    # The reference's code, in a child process (its imports need their own ``utils``); with
    # --concurrent it shares the GPU with our reference-setting run, so neither's seconds are
    # its own.
    worker = subprocess.Popen([sys.executable, __file__, "--reference_repo",
                               str(args.reference_repo), "--iterations", str(args.iterations),
                               "--device", args.device, "--worker", str(args.out)])
    if not args.concurrent and worker.wait() != 0:
        raise SystemExit("the reference's run failed")

    # Ours, the reference setting, the same batch.
    synced(device)
    started = time.perf_counter()
    ours_reference = explain("step", adapter, x, target, ep_optimizer="reference",
                             num_iter=args.iterations, perturb_area=(0.1,))
    synced(device)
    ours_reference_seconds = time.perf_counter() - started
    print(f"ours, reference setting: {ours_reference_seconds:.1f} s", flush=True)
    if worker.wait() != 0:
        raise SystemExit("the reference's run failed")
    reference = torch.load(args.out / "reference.pt")
    print(f"reference: {reference['seconds']:.1f} s for {len(inputs)} clips in one batch",
          flush=True)

    # Our default: clip by clip at the reference's final in-frame area of the clip, or with
    # --one_area the whole batch at the mean of those areas.
    areas = [round(float(reference["masks"][i].float().mean()), 3) for i in range(len(items))]
    defaults = {}
    if args.one_area:
        area = round(float(np.mean(areas)), 3)
        synced(device)
        started = time.perf_counter()
        ours = explain("step", adapter, x, target, perturb_area=(area,))
        synced(device)
        seconds = (time.perf_counter() - started) / len(items)
        # model_evaluations counts the batch's rows: per clip it is that over the batch size
        evaluations = ours.diagnostics[0].get("model_evaluations", 0) / len(items)
        for i in range(len(items)):
            defaults[i] = (ours.maps[i, 0], seconds, evaluations, area)
    else:
        for i in range(len(items)):
            synced(device)
            started = time.perf_counter()
            ours = explain("step", adapter, x[i:i + 1], target[i:i + 1], perturb_area=(areas[i],))
            synced(device)
            defaults[i] = (ours.maps[0, 0], time.perf_counter() - started,
                           ours.diagnostics[0].get("model_evaluations"), areas[i])

    rows = []
    for i, item in enumerate(items):
        xi, ti, on_a = x[i:i + 1], int(target[i]), item["on_a"]
        row = {"clip": item["clip"], "target": item["target"], "spliced": on_a is not None}
        score = scorer(adapter, xi, ti, on_a)
        row["reference"] = score(reference["masks"][i])
        row["ours_reference_setting"] = score(ours_reference.maps[i, 0])
        mask, seconds, evaluations, area = defaults[i]
        row["ours_default"] = score(mask)
        row["ours_default"].update(seconds=seconds, evaluations=evaluations, asked_area=area)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            args.json.write_text(json.dumps({"partial_rows": rows}, default=float))

    def mean(kind, key, spliced):
        values = [r[kind][key] for r in rows if r["spliced"] == spliced and key in r[kind]]
        return round(float(np.mean(values)), 4) if values else None

    summary = {}
    for kind in ("reference", "ours_reference_setting", "ours_default"):
        summary[kind] = {
            "clips": {k: mean(kind, k, False) for k in ("p", "area", "deletion_blur",
                                                        "deletion_fade", "insertion_blur",
                                                        "insertion_fade")},
            "spliced": {k: mean(kind, k, True) for k in ("share_on_target_half",
                                                         "top_frame_on_target_half", "p",
                                                         "area")}}
    wins = {}
    for key, better in (("deletion_blur", -1), ("deletion_fade", -1), ("insertion_blur", 1),
                        ("insertion_fade", 1), ("p", 1)):
        pairs = [(r["ours_default"][key], r["reference"][key]) for r in rows if not r["spliced"]]
        wins[key] = {"ours_better": sum((o - f) * better > 0 for o, f in pairs),
                     "reference_better": sum((o - f) * better < 0 for o, f in pairs)}
    matched = [abs(r["ours_reference_setting"]["p"] - r["reference"]["p"]) <= 0.05
               and abs(r["ours_reference_setting"]["area"] - r["reference"]["area"]) <= 0.01
               for r in rows]
    result = {
        "what": "STEP on the I3D port: the reference demo's own video_perturbation against ours",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "iterations": args.iterations,
        "reference_seconds_batch": round(reference["seconds"], 1),
        "reference_evaluations_per_clip": args.iterations,
        "ours_reference_setting_seconds_batch": round(ours_reference_seconds, 1),
        "concurrent": args.concurrent, "one_area": args.one_area,
        "ours_default_seconds_per_clip": mean("ours_default", "seconds", False),
        "ours_default_evaluations_per_clip": mean("ours_default", "evaluations", False),
        "reference_setting_matches_within_tolerance": f"{sum(matched)} of {len(matched)}",
        "reference_progress": reference["progress"],
        "summary": summary, "wins_ours_default_vs_reference_clips": wins,
        "rows": rows}
    for path in (args.out / "step_i3d.json", args.json):
        if path:
            path.write_text(json.dumps(result, indent=1, default=float))
    print(json.dumps({k: result[k] for k in result if k not in ("rows", "reference_progress")},
                     indent=1, default=float))


if __name__ == "__main__":
    main()
