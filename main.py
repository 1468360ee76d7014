"""VideoVisual command line: explain a video network's decision on clips.

    python main.py --videos_dir test_data/kinetics --model i3d --vis_method grad_cam

Parses arguments and hands over to :mod:`utils.pipeline`; holds no algorithm.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

INTERRUPTED = "interrupted: finished clips are kept; rerun the same command to resume"

if __name__ == "__main__":
    def _stop_loading(signum, frame):  # noqa: ARG001 - signal handler signature
        print(INTERRUPTED, file=sys.stderr, flush=True)
        os._exit(130)

    # Ctrl-C or SIGTERM while torch and the rest load: one line and exit 130, no traceback
    # (main() installs its own handler once it runs). The process ends at once: an exception
    # raised inside a half-imported extension module can abort or leave it broken, and
    # nothing has been written yet.
    signal.signal(signal.SIGINT, _stop_loading)
    signal.signal(signal.SIGTERM, _stop_loading)

# Only what the parser and the option checks need is imported here; torch and the pipeline load
# after them, so that --help and usage errors answer at once.
from models import MODEL_NAMES
from models.layouts import INPUT_LAYOUTS
from utils.render.formats import ALL_FORMATS, FORMATS, TABLE
from utils.io.errors import InterruptHandler, SetupError
from utils.pipeline.options import (COLORMAPS, CPU_BATCH, CUDA_BATCH, NORMALIZATIONS, SCORE_GAMES,
                                    polarity_error)
from vis_methods import METHODS, OPTIONS, VIEWS, OptionError, check_options, methods_taking

PRETRAIN_DATASETS = ("kinetics", "epic-kitchens-verb", "epic-kitchens-noun", "synthetic")


def _triple(text: str) -> tuple:
    values = tuple(int(v) for v in text.split(","))
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected T,H,W positive integers, got {text!r}")
    return values


def _floats3(text: str) -> tuple:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 1 or 3 comma-separated numbers, got {text!r}")
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected 1 or 3 finite numbers, got {text!r}")
    return values


def _methods(text: str) -> tuple:
    chosen = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in chosen if m not in METHODS and m not in VIEWS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown method {', '.join(unknown) or text!r}; choose from {', '.join(METHODS)}, "
            f"or a view: {', '.join(VIEWS)}")
    if len(chosen) > 1 and any(m in VIEWS for m in chosen):
        raise argparse.ArgumentTypeError(f"a view ({', '.join(VIEWS)}) runs alone, not with "
                                         "other methods")
    if len(set(chosen)) != len(chosen):
        raise argparse.ArgumentTypeError(f"a method is named twice in {text!r}")
    return chosen


def _option_help(option) -> str:
    takers = methods_taking(option.name)
    return f"{option.help} [{', '.join(takers)}]"


def _option_argument(option) -> dict:
    """argparse settings for a declared option (values are checked by the option itself)."""
    if option.kind == "choice":
        return {"choices": option.choices}
    if option.kind == "int":
        return {"type": int}
    if option.kind == "float":
        return {"type": float}
    if option.kind == "floats":
        return {"type": float, "nargs": "+"}
    if option.kind == "triple":
        return {"type": _triple}
    return {}


def _scores(text: str) -> tuple:
    chosen = tuple(g.strip() for g in text.split(",") if g.strip())
    unknown = [g for g in chosen if g not in SCORE_GAMES]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise argparse.ArgumentTypeError(f"--score takes a comma list of {','.join(SCORE_GAMES)}")
    return chosen


def _formats(text: str) -> tuple:
    chosen = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in chosen if f not in ALL_FORMATS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"formats are a comma list of {','.join(ALL_FORMATS)}")
    return chosen


class _HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default unless its help already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" not in text and action.default not in (None, False, argparse.SUPPRESS)
                and action.option_strings):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """A bad option is one line (the error and where to look), not the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} "
                     f"(see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="main.py", formatter_class=_HelpFormatter, allow_abbrev=False,
        description="Explain where and when a video network looked: attribution maps for clips.")
    io = parser.add_argument_group("input and output")
    io.add_argument("--videos_dir", type=Path, required=True,
                    help="a folder of clip folders and/or video files, one clip folder, or one video "
                         "file; the label is the class name before '-' in the clip's name")
    io.add_argument("--out_dir", type=Path, default=Path("visual_res"), help="output root")
    io.add_argument("--save_label", default=None,
                    help="extra sub-folder under <out_dir>/<vis_method>/<model>/")
    io.add_argument("--formats", type=_formats, default=FORMATS,
                    help="comma list of outputs: " + "; ".join(f"{f.name} ({f.shows})" for f in TABLE)
                         + f" (default: {','.join(FORMATS)})")
    io.add_argument("--overwrite", action="store_true",
                    help="redo clips whose outputs exist (without it, clips done with the same settings are "
                         "skipped, so a rerun resumes)")
    io.add_argument("--clip_length", type=int, default=None,
                    help="frames sampled uniformly from each clip (default: the model's)")

    model = parser.add_argument_group("model")
    model.add_argument("--model", default="i3d",
                       help="network to explain: a registered name "
                            f"({', '.join(MODEL_NAMES)}), your own builder as path/to/file.py:function "
                            "or package.module:function (returning an nn.Module or a ModelSpec), "
                            "or a Hugging Face video classifier as hf:FOLDER_OR_NAME (local files "
                            "or the local cache)")
    model.add_argument("--classes", type=Path, default=None,
                       help="class names in output order: one per line, CSV (name or class_key "
                            "column, optional synonyms column), or a JSON list")
    model.add_argument("--pretrain_dataset", default=None, choices=PRETRAIN_DATASETS,
                       help="dataset the weights were trained on (default: the model's own)")
    model.add_argument("--weights", type=Path, default=None,
                       help="load this local checkpoint instead of the default weights")
    model.add_argument("--no_gpu", action="store_true", help="run on the CPU even if CUDA is available")
    model.add_argument("--seed", type=int, default=None,
                       help="seed for sampled methods and for torch (default: 0)")

    model.add_argument("--resize", type=int, default=None,
                       help="short side frames are resized to (default: the model's)")
    model.add_argument("--crop", type=int, default=None,
                       help="side of the centre crop (default: the model's)")
    model.add_argument("--mean", type=_floats3, default=None,
                       help="normalisation mean, 1 or 3 comma-separated values (default: the model's)")
    model.add_argument("--std", type=_floats3, default=None,
                       help="normalisation std, 1 or 3 comma-separated values (default: the model's)")
    model.add_argument("--input_layout", default=None, choices=INPUT_LAYOUTS,
                       help="what the network takes: NCTHW, NTCHW or frames folded N(TC)HW "
                            "(default: the model's)")

    method = parser.add_argument_group(
        "method", "Method options: each method takes the ones it declares; a flag the chosen "
        "method does not take is an error (default: the method's own).")
    method.add_argument("--vis_method", default="grad_cam", type=_methods,
                        help="attribution method, or several separated by commas "
                             f"({', '.join(METHODS)}); or one view of the network "
                             f"({', '.join(VIEWS)})")
    method.add_argument("--polarity", default="positive", choices=("positive", "negative", "both"),
                        help="show evidence for the target, against it, or both (signed "
                             "methods only; --counterfactual shows what argues against a class "
                             "with any method)")
    pictures = parser.add_argument_group("pictures and scores")
    pictures.add_argument("--colormap", default=None, choices=COLORMAPS,
                          help="colour map of the overlays (default: inferno for unsigned maps, "
                               "RdBu_r for signed maps under --polarity both)")
    pictures.add_argument("--opacity", type=float, default=1.0,
                          help="overlay strength where the map is strongest, in (0, 1]")
    pictures.add_argument("--normalize", default="robust", choices=NORMALIZATIONS,
                          help="map scaling, shared by one clip's frames: robust (99.5th "
                               "percentile of |map|), minmax, or none (raw values, to compare "
                               "clips on one scale)")
    pictures.add_argument("--score", type=_scores, default=(),
                          help="faithfulness per clip and target: deletion,insertion AUC of the "
                               "map and of a random map, in summary.csv and on the frame grid "
                               "(2 x (score_steps + 1) forward passes per game)")
    pictures.add_argument("--score_steps", type=int, default=10,
                          help="steps of the deletion and insertion curves")
    for option in OPTIONS.values():
        if option.cli and option.name != "seed":   # --seed is a general flag (model group)
            method.add_argument(f"--{option.name}", default=None, help=_option_help(option),
                                **_option_argument(option))

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
    long_video = parser.add_argument_group(
        "long videos", "Slide the model over the whole video instead of sampling it to one clip")
    long_video.add_argument("--window", default=None, metavar="N|Ns",
                            help="window length in frames (16) or seconds (2s); 'auto': the "
                                 "model's clip length at 25 fps (16 frames: 0.64 s). Writes a "
                                 "timeline per video (CSV, PNG, MP4)")
    long_video.add_argument("--stride", default=None, metavar="N|Ns",
                            help="step between windows in frames or seconds (default: the "
                                 "window, so windows lie side by side); implies --window auto")
    long_video.add_argument("--fps", type=float, default=25.0,
                            help="frame rate of frame folders in windowed runs (videos use "
                                 "their container's time stamps)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars and no per-clip lines (warnings and errors are "
                             "still printed)")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="clips per forward/backward where that is exact (one plain target "
                             "per clip); the next clips are decoded and the finished ones drawn "
                             "in background threads "
                             f"(default: {CPU_BATCH} on the CPU, {CUDA_BATCH} on CUDA)")
    parser.add_argument("--writers", type=int, default=None,
                        help="processes drawing and writing the outputs (0: two threads in this "
                             "process; default: the cores the model leaves free, 0 when fewer "
                             "than two)")
    parser.add_argument("--precision", default="float32", choices=("float32", "bf16"),
                        help="bf16: run the model under bfloat16 autocast (channels-last input "
                             "on CUDA); faster on GPUs, but maps differ from float32 (measured "
                             "tolerance: docs/guide/scale.md)")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="explain only every N-th clip starting at the I-th (counted from 1: "
                             "1/4 .. 4/4); without it, "
                             "torchrun's RANK/WORLD_SIZE or a SLURM array's task id/count are read")
    return parser


def method_options(args: argparse.Namespace, methods: Sequence[str]) -> Dict[str, dict]:
    """Each method's resolved options from the flags given. A flag that none of the chosen
    methods takes raises :class:`OptionError` naming the methods that do."""
    given = {name: getattr(args, name) for name, option in OPTIONS.items() if option.cli}
    if args.seed is not None:
        given["seed"] = args.seed
    resolved = {}
    for method in methods:
        declared = (METHODS.get(method) or VIEWS[method]).options
        resolved[method] = check_options(method, {k: v for k, v in given.items()
                                                  if k in declared})
    for name, value in given.items():
        if value is not None and not any(
                name in (METHODS.get(m) or VIEWS[m]).options for m in methods):
            if name == "seed":
                continue  # --seed also seeds torch for the whole run
            # Re-check with the first method to get the one-line message naming the takers.
            check_options(methods[0], {name: value})
    return resolved


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise SetupError(f"--out_dir {out_dir} exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise SetupError(f"--out_dir {out_dir} is not writable ({error.strerror or error})") from None


def _window_settings(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """The windowed run's settings from --window/--stride/--fps (``None``: no windows)."""
    if args.window is None and args.stride is None:
        return None
    from utils.io.stream import parse_span
    from utils.pipeline.windows import WindowSettings

    spans = {}
    for flag in ("window", "stride"):
        value = getattr(args, flag)
        try:
            spans[flag] = None if value in (None, "auto") else parse_span(value)
        except ValueError as error:
            parser.error(f"--{flag}: {error}")
    if not (math.isfinite(args.fps) and args.fps > 0):
        parser.error("--fps must be a positive number")
    if any(m in VIEWS for m in args.vis_method) or len(args.vis_method) > 1:
        parser.error("--window runs one attribution method (not a view, not several)")
    if args.counterfactual or args.regression_target is not None:
        parser.error("--window explains classifiers: no --counterfactual or --regression_target")
    # the whole-video MP4 unless --formats names formats without it
    video = "mp4" in args.formats or tuple(args.formats) == tuple(FORMATS)
    return WindowSettings(spans["window"], spans["stride"], args.fps, video=video)


def _interruptible(run_main):
    """Ctrl-C and SIGTERM wherever they land (a model loading, a summary being read): one line
    and exit 130, also when a library turned the interrupt into an error of its own."""
    import functools
    import threading

    @functools.wraps(run_main)
    def wrapper(argv: Optional[List[str]] = None) -> int:
        if threading.current_thread() is not threading.main_thread():
            return run_main(argv)
        handler = InterruptHandler()
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)
                    if signal.getsignal(s) is not signal.SIG_IGN}
        try:
            code = run_main(argv)
        except KeyboardInterrupt:
            code = None
        except Exception:
            if not handler.fired:
                raise
            code = None
        finally:
            for number, old in previous.items():
                signal.signal(number, old)
        if code is None or (handler.fired and code != 130):
            print(INTERRUPTED, file=sys.stderr)
            return 130
        return code
    return wrapper


@_interruptible
def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.topk is not None and args.topk < 1:
        parser.error("--topk must be at least 1")
    for flag in ("clip_length", "resize", "crop", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag} must be at least 1")
    if not 0.0 < args.opacity <= 1.0:
        parser.error(f"--opacity must lie in (0, 1], got {args.opacity:g}")
    if args.score_steps < 1:
        parser.error("--score_steps must be at least 1")
    if args.writers is not None and args.writers < 0:
        parser.error("--writers must be at least 0")
    if args.std is not None and any(v == 0 for v in args.std):
        parser.error("--std values must not be 0")
    if args.seed is not None and not 0 <= args.seed < 2 ** 32:
        parser.error("--seed must lie in 0 .. 2**32-1")
    methods = args.vis_method
    windows = _window_settings(parser, args)
    try:
        options = method_options(args, methods)
    except OptionError as error:
        parser.error(str(error))
    if methods[0] not in VIEWS:
        problem = polarity_error(args.polarity, methods, options)
        if problem:
            parser.error(problem)
    from utils.pipeline.setup import UnknownModel, resolve_spec
    try:
        spec = resolve_spec(args)
    except UnknownModel as error:
        parser.error(str(error))
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    dataset = args.pretrain_dataset or spec.pretrain_datasets[0]
    if dataset not in spec.pretrain_datasets and args.weights is None:
        parser.error(f"--model {args.model} has weights for {', '.join(spec.pretrain_datasets)} "
                     f"only; pass --weights FILE for {dataset}")
    changes = {k: v for k, v in (("resize", args.resize), ("crop", args.crop),
                                 ("mean", args.mean), ("std", args.std),
                                 ("input_layout", args.input_layout),
                                 ("clip_length", args.clip_length)) if v is not None}
    if args.target_layer is not None:
        changes["target_layer"] = args.target_layer
    if changes:
        spec = spec.with_changes(**changes)
    if spec.crop is not None and spec.resize is not None and spec.crop > spec.resize:
        parser.error(f"--crop {spec.crop} is larger than the resized short side {spec.resize}")
    import torch

    from models import WeightsUnavailableError
    from models.adapter import LayerLayoutError
    from utils.io.clips import find_clips
    from utils.io.labels import resolve_class
    from utils.io.paths import check_save_label, model_folder_name, output_dir, prepare_output_folders
    from utils.pipeline.runner import RunCounts, run
    from utils.pipeline.settings import RunSettings, shard_from, weights_identity
    from utils.pipeline.setup import check_settings, choose_device, class_names_for, load_model
    from utils.pipeline.stages import parse_regression_values
    try:
        class_names, synonyms = class_names_for(spec, dataset, args.classes)
    except (ValueError, OSError) as error:
        print(f"error: --classes: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    if args.target not in ("label", "pred") and args.topk is None and class_names:
        try:
            resolve_class(args.target, class_names)
        except ValueError as error:
            print(f"error: --target: {error}", file=sys.stderr)
            return 2
    torch.manual_seed(0 if args.seed is None else args.seed)
    if args.regression_target not in (None, "sidecar"):
        try:
            parse_regression_values(args.regression_target)
        except SetupError as error:
            parser.error(str(error))
    try:
        check_save_label(args.save_label)
        shard = shard_from(args.shard)
        _check_out_dir(args.out_dir)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            clips = shard.select(find_clips(args.videos_dir))
        for warning in caught:
            print(f"warning: {' '.join(str(warning.message).split())}", file=sys.stderr)
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    identity = {"name": args.model, "weights": weights_identity(args.weights, spec.weights_id),
                "pretrain_dataset": dataset, "resize": spec.resize, "crop": spec.crop,
                "mean": list(spec.mean), "std": list(spec.std), "input_layout": spec.input_layout,
                "target_layer": spec.target_layer,
                "classes": weights_identity(args.classes) if args.classes else None}
    settings = RunSettings(
        methods=methods, model_name=args.model, out_dir=args.out_dir, formats=args.formats,
        polarity=args.polarity, target=args.target, topk=args.topk,
        counterfactual=args.counterfactual, regression_target=args.regression_target,
        clip_length=args.clip_length, overwrite=args.overwrite, method_options=options,
        model_identity=identity, progress=not args.quiet, save_label=args.save_label,
        batch_size=args.batch_size, precision=args.precision, colormap=args.colormap,
        opacity=args.opacity, normalize=args.normalize, scores=args.score,
        score_steps=args.score_steps, writers=args.writers, target_layer=args.target_layer)
    folders = {m: output_dir(args.out_dir, m, model_folder_name(args.model), args.save_label)
               for m in methods}
    compare_folder = (output_dir(args.out_dir, "compare", model_folder_name(args.model),
                                 args.save_label) if len(methods) > 1 else None)
    try:
        prepare_output_folders(args.out_dir, [*folders.values(), *filter(None, [compare_folder])])
        check_settings(spec, settings)
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    device = choose_device(args.no_gpu)
    try:
        loader = lambda: load_model(spec, args.weights, dataset, device,  # noqa: E731
                                    class_names, settings=settings)
        if windows is not None:
            from utils.pipeline.windows import run_windowed
            failures = run_windowed(clips, loader, device, settings, class_names,
                                    folders[methods[0]], windows, synonyms)
            counts = RunCounts(len(clips) - failures, 0, failures)
        elif methods[0] in VIEWS:
            from utils.pipeline.views import run_view
            failures = run_view(methods[0], clips, loader, device, settings, class_names,
                                folders[methods[0]], synonyms)
            counts = RunCounts(len(clips) - failures, 0, failures)
        else:
            counts = run(clips, loader, device, settings, class_names, folders, synonyms,
                         compare_folder)
    except (WeightsUnavailableError, SetupError, LayerLayoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    where = ", ".join(str(f) for f in folders.values())
    if compare_folder is not None:
        where += f"; methods side by side in {compare_folder}"
    part = f" (shard {shard.index + 1}/{shard.count}, {shard.source})" if shard.count > 1 else ""
    print(f"{len(clips)} clips{part}: {counts.text()}; results in {where}", file=sys.stderr)
    return 1 if counts.failed else 0


def cli() -> None:
    """The ``videovisual`` command (installed by ``pip install -e .``)."""
    code = main()
    # The work is done and recorded: a late Ctrl-C or SIGTERM must not turn the exit status
    # into a signal's while the interpreter shuts down.
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)
    exit_without_teardown(code)


def exit_without_teardown(code: int) -> None:
    """End the process with ``code`` once everything is written, without the interpreter's
    teardown: freeing every loaded module's objects one by one costs a one-clip call about
    0.4 s after ``import torch`` alone (bench/bench_startup.py) and gains an ending process
    nothing. What Python does before that teardown still happens, in its order: other
    non-daemon threads are joined, then the atexit handlers run (multiprocessing's, logging's);
    then the standard streams are flushed."""
    import atexit
    import threading
    shutdown = getattr(threading, "_shutdown", None)   # what the interpreter calls at exit
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):     # a closed pipe or stream: nothing left to say
            pass
    os._exit(code)


if __name__ == "__main__":
    cli()
