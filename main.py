"""VideoVisual command line: explain a video network's decision on clips.

    python main.py --videos_dir test_data/kinetics --model i3d --vis_method grad_cam

Parses arguments and hands over to :mod:`utils.pipeline`; holds no algorithm.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

import torch

from models import MODEL_NAMES, WeightsUnavailableError, get_model_spec
from utils.labels import epic_class_names
from utils.pipeline import FORMATS, ModelHolder, RunSettings, output_dir, run
from utils.video import find_clips
from vis_methods import METHODS

PRETRAIN_DATASETS = ("kinetics", "epic-kitchens-verb", "epic-kitchens-noun", "synthetic")


def _triple(text: str) -> tuple:
    values = tuple(int(v) for v in text.split(","))
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected T,H,W positive integers, got {text!r}")
    return values


def _formats(text: str) -> tuple:
    chosen = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"formats are a comma list of {','.join(FORMATS)}")
    return chosen


class _HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default unless its help already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" not in text and action.default not in (None, False, argparse.SUPPRESS)
                and action.option_strings):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py", formatter_class=_HelpFormatter,
        description="Explain where and when a video network looked: attribution maps for clips.")
    io = parser.add_argument_group("input and output")
    io.add_argument("--videos_dir", type=Path, required=True,
                    help="a folder of clip folders and/or video files, one clip folder, or one video "
                         "file; the label is the class name before '-' in the clip's name")
    io.add_argument("--out_dir", type=Path, default=Path("visual_res"), help="output root")
    io.add_argument("--save_label", default=None,
                    help="extra sub-folder under <out_dir>/<vis_method>/<model>/")
    io.add_argument("--formats", type=_formats, default=FORMATS,
                    help="comma list of outputs: png (frame grid), gif (animation), npy (raw map) "
                         "(default: png,gif,npy)")
    io.add_argument("--overwrite", action="store_true",
                    help="redo clips whose outputs exist (without it, clips done with the same settings are "
                         "skipped, so a rerun resumes)")
    io.add_argument("--clip_length", type=int, default=None,
                    help="frames sampled uniformly from each clip (default: the model's)")

    model = parser.add_argument_group("model")
    model.add_argument("--model", default="i3d", choices=MODEL_NAMES, help="network to explain")
    model.add_argument("--pretrain_dataset", default=None, choices=PRETRAIN_DATASETS,
                       help="dataset the weights were trained on (default: the model's own)")
    model.add_argument("--weights", type=Path, default=None,
                       help="load this local checkpoint instead of the default weights")
    model.add_argument("--no_gpu", action="store_true", help="run on the CPU even if CUDA is available")
    model.add_argument("--seed", type=int, default=0, help="seed for sampled methods")

    method = parser.add_argument_group("method")
    method.add_argument("--vis_method", default="grad_cam", choices=tuple(METHODS),
                        help="attribution method")
    method.add_argument("--polarity", default="positive", choices=("positive", "negative", "both"),
                        help="show evidence for the target, against it, or both (signed)")
    method.add_argument("--num_iter", type=int, default=None,
                        help="iterations (default per method): integrated_grad steps (25), smooth_grad samples "
                             "(25), 2d_ep/3d_ep/step optimisation steps (100; 2000 with "
                             "--ep_optimizer reference), rise masks (500)")
    method.add_argument("--internal_batch_size", type=int, default=None,
                        help="model evaluations per batch inside a method (default per method and device: 1 for "
                              "integrated_grad/smooth_grad on the CPU, 8 on CUDA; 16 for occlusion and rise; "
                              "all for the extremal perturbations)")
    method.add_argument("--target_layer", default=None,
                        help="CAM layer as a dotted module name (default: the model's)")
    method.add_argument("--cam_pooling", default=None, choices=("time", "3d"),
                        help="CAM channel weights per time slice (time, the default) or over T×H×W (3d)")
    method.add_argument("--ig_baseline", default="black", choices=("black", "blur", "zeros"),
                        help="integrated-gradients baseline: a black clip in pixel space (default), a "
                             "blurred clip, or zeros in model-input space")
    method.add_argument("--ig_integration", default=None,
                        choices=("riemann_left", "riemann_trapezoid", "gausslegendre"),
                        help="integration rule for integrated gradients (default: riemann_left)")
    method.add_argument("--noise_level", type=float, default=None,
                        help="SmoothGrad noise std as a fraction of the clip's value range (default: 0.15)")
    method.add_argument("--perturb_area", type=float, nargs="+", default=None,
                        help="extremal perturbation area(s) as fractions of the frame (2d_ep) or clip (3d_ep, "
                             "step), optimised together, one output each (default: 0.1)")
    method.add_argument("--ep_variant", default=None, choices=("preserve", "delete", "dual"),
                        help="extremal perturbation variant (default: preserve)")
    method.add_argument("--perturbation", default=None, choices=("blur", "fade"),
                        help="how masked-out content is removed (default: blur)")
    method.add_argument("--ep_optimizer", default=None, choices=("adam", "reference"),
                        help="extremal perturbation optimiser: adam (default: 100 steps, two "
                             "starts, early stopping) or reference (the reference demo's SGD, "
                             "2000 steps)")
    method.add_argument("--occlusion_window", type=_triple, default=None, help="occlusion window T,H,W (default: a quarter of each)")
    method.add_argument("--occlusion_stride", type=_triple, default=None, help="occlusion stride T,H,W (default: half the window)")
    method.add_argument("--occlusion_fill", default=None, choices=("blur", "mean"),
                        help="what occluded voxels are replaced by (default: blur)")
    method.add_argument("--rise_cell", type=_triple, default=None, help="RISE low-resolution cell T,H,W (default: a quarter "
                        "of each dimension)")
    method.add_argument("--rise_p", type=float, default=None,
                        help="RISE probability of keeping a cell (default: 0.5)")

    target = parser.add_argument_group("target")
    target.add_argument("--target", default="label",
                        help="what to explain: 'label' (the clip's label; the prediction when the "
                             "label is unknown), 'pred', or a class name or index")
    target.add_argument("--topk", type=int, default=None,
                        help="explain the top-K predicted classes, one output set each")
    target.add_argument("--counterfactual", action="store_true",
                        help="show the regions that argue against the target class")
    target.add_argument("--regression_target", default=None,
                        help="regression models: the true output vector 'v1,v2,...' or 'sidecar' "
                             "(ground_truth.json / regression_target.json in each clip folder)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def method_options(args: argparse.Namespace, spec) -> dict:
    """CLI flags mapped to the option names the methods take; each method picks its own."""
    return {
        "steps": args.num_iter, "samples": args.num_iter, "num_iter": args.num_iter,
        "internal_batch_size": args.internal_batch_size,
        "target_layer": args.target_layer or spec.target_layer,
        "cam_pooling": args.cam_pooling,
        # "black" is turned into the model's black clip per clip; other baselines are IG-only.
        "baseline": args.ig_baseline if args.vis_method == "integrated_grad" else "black",
        "integration": args.ig_integration, "noise_level": args.noise_level,
        "areas": args.perturb_area, "variant": args.ep_variant,
        "perturbation": args.perturbation, "optimizer": args.ep_optimizer,
        "window": args.occlusion_window, "stride": args.occlusion_stride,
        "fill": args.occlusion_fill, "mask_cell": args.rise_cell, "p_keep": args.rise_p,
        "seed": args.seed,
    }


def class_names_for(spec, dataset: str) -> List[str]:
    if dataset.startswith("epic-kitchens-") and dataset not in spec.pretrain_datasets:
        return epic_class_names(dataset.rsplit("-", 1)[1])
    return list(spec.class_names(dataset))


def choose_device(no_gpu: bool) -> torch.device:
    if no_gpu:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    print("note: CUDA is not available; running on the CPU (pass --no_gpu to silence this)",
          file=sys.stderr)
    return torch.device("cpu")


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.topk is not None and args.topk < 1:
        parser.error("--topk must be at least 1")
    if args.clip_length is not None and args.clip_length < 1:
        parser.error("--clip_length must be at least 1")
    for flag in ("num_iter", "internal_batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag} must be at least 1")
    if args.perturb_area is not None and not all(0 < a < 1 for a in args.perturb_area):
        parser.error("--perturb_area values must lie strictly between 0 and 1")
    if args.rise_p is not None and not 0 < args.rise_p <= 1:
        parser.error("--rise_p must lie in (0, 1]")
    if args.noise_level is not None and args.noise_level < 0:
        parser.error("--noise_level must not be negative")
    spec = get_model_spec(args.model)
    dataset = args.pretrain_dataset or spec.pretrain_datasets[0]
    if dataset not in spec.pretrain_datasets and args.weights is None:
        parser.error(f"--model {args.model} has weights for {', '.join(spec.pretrain_datasets)} "
                     f"only; pass --weights FILE for {dataset}")
    try:
        clips = find_clips(args.videos_dir)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.seed is not None:
        torch.manual_seed(args.seed)
    settings = RunSettings(
        method=args.vis_method, model_name=args.model, out_dir=args.out_dir, formats=args.formats,
        polarity=args.polarity, target=args.target, topk=args.topk,
        counterfactual=args.counterfactual, regression_target=args.regression_target,
        clip_length=args.clip_length, overwrite=args.overwrite,
        method_options=method_options(args, spec), progress=not args.quiet)
    folder = output_dir(args.out_dir, args.vis_method, args.model, args.save_label)
    holder = ModelHolder(spec, args.weights, dataset, choose_device(args.no_gpu))
    try:
        failures = run(clips, holder, settings, class_names_for(spec, dataset), folder)
    except WeightsUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    done = len(clips) - failures
    print(f"{done}/{len(clips)} clips done, {failures} failed; results in {folder}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
