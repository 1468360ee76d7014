"""Wall time of the gradient and CAM methods relative to one forward + backward pass.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 python bench/bench_gradients.py --model i3d --threads 1 --clock cpu \
        --captum_batch_sizes 1,5
    python bench/bench_gradients.py --model demo_3dcnn --repeats 3

For every method it prints the median wall time over ``--repeats`` runs and its ratio to

- ``fwd+bwd (params)``: one forward + ``backward()`` with parameter gradients, the way the
  reference demo computes a gradient, and
- ``fwd+bwd (input)``: one forward + input-only ``autograd.grad`` (parameters frozen).

Integrated gradients and SmoothGrad are also timed at each ``--batch_sizes`` value and against
a one-step-at-a-time loop written like the reference (parameter gradients, ``.backward()``,
one pass per step). Target: IG with 25 steps costs less than 25 forward + backward passes.
Integrated gradients run with the ``zeros`` baseline (model input 0, Captum's default) and the
``--ig_integration`` rule. CAM methods use the model's declared target layer (I3D: ``Mixed_5c``).

Peers (classifiers; skipped with ``--no_peers`` or when a peer is not installed), timed on the
same clip in the same run, each printed as the ratio ours / peer:

- Captum's ``IntegratedGradients``: same steps, zero baseline and rule, at every
  ``--captum_batch_sizes`` value; the ratio is ours (CPU default batch) over Captum's best.
- pytorch-grad-cam's ``GradCAM`` on the 5-D model at the same layer, against ours with
  ``cam_pooling="3d"`` (one weight per channel, as pytorch-grad-cam pools 5-D gradients).

Each peer's map is compared with ours so the timing is like for like: integrated gradients by
the largest difference relative to the largest |value| of Captum's map; Grad-CAM after both maps
are scaled to [0, 1] per clip, once against pytorch-grad-cam's output (which it upsamples with a
cubic spline, ours trilinearly) and once against its channel weights and activations upsampled
trilinearly like ours.
On a machine shared with other jobs, ``--clock cpu`` times this process's CPU use instead of
the wall clock (use ``--threads 1`` with it). Weights do not change the timing; when a model's
weights are not installed an untrained copy of the architecture is timed (and the script says
so).
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, List

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models import WeightsUnavailableError, get_model_spec  # noqa: E402
from vis_methods import METHODS, explain, get_method  # noqa: E402
from vis_methods.gradient import INTEGRATION_RULES, default_internal_batch_size  # noqa: E402
from vis_methods.targets import as_target_fn  # noqa: E402

DEFAULT_METHODS = ("grad", "grad*input", "integrated_grad", "smooth_grad", "guided_backprop",
                   "deconvnet", "grad_cam", "grad_cam_pp", "xgrad_cam", "layer_cam", "cam",
                   "guided_grad_cam")


def untrained_architecture(name: str) -> nn.Module:
    """The network of registry entry ``name`` with random weights (timing only)."""
    if name == "i3d":
        from models.i3d import InceptionI3d
        return InceptionI3d()
    if name.startswith("demo_"):
        from models.demo import build_model
        return build_model(name)
    from torchvision.models import video
    builders = {"r2plus1d": video.r2plus1d_18, "r3d": video.r3d_18, "mc3": video.mc3_18,
                "s3d": video.s3d}
    return builders[name](weights=None)


def load_model(name: str, dataset: str) -> nn.Module:
    spec = get_model_spec(name)
    try:
        return spec.load(None, dataset)
    except WeightsUnavailableError as error:
        print(f"note: {error}\nnote: timing an untrained {name} instead")
        return untrained_architecture(name).eval()


def median_seconds(run: Callable[[], object], repeats: int, clock: str = "wall") -> float:
    """Median over ``repeats`` runs of wall time, or of this process's CPU time (``"cpu"``,
    which other processes competing for the cores do not inflate)."""
    timer = time.perf_counter if clock == "wall" else time.process_time
    times: List[float] = []
    for _ in range(repeats):
        start = timer()
        run()
        times.append(timer() - start)
    return statistics.median(times)


def forward_backward_with_parameters(model: nn.Module, clip: torch.Tensor, target_fn) -> None:
    """One pass as the reference does it: parameter gradients and ``.backward()``."""
    inputs = clip.detach().clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    target_fn(model(inputs)).sum().backward()
    model.zero_grad(set_to_none=True)


def reference_loop(model: nn.Module, clip: torch.Tensor, target_fn, count: int,
                   make_input: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """One step at a time, as in the reference: ``count`` forward + ``backward()`` passes."""
    total = torch.zeros_like(clip)
    for step in range(count):
        inputs = make_input(step).detach().requires_grad_(True)
        model.zero_grad(set_to_none=True)
        target_fn(model(inputs)).sum().backward()
        total += inputs.grad
    model.zero_grad(set_to_none=True)
    return total / count


def unit_scaled(maps: torch.Tensor) -> torch.Tensor:
    """Maps ``(N, ...)`` scaled to [0, 1] per clip (min to 0, max to 1), float64."""
    flat = maps.detach().double().flatten(1)
    low = flat.amin(1, keepdim=True)
    span = (flat.amax(1, keepdim=True) - low).clamp_min(1e-30)
    return ((flat - low) / span).view(maps.shape)


def captum_peer(model: nn.Module, clip: torch.Tensor, target: int, steps: int, rule: str,
                batch_sizes: List[int], ours: dict, default_batch: int, repeats: int,
                clock: str) -> None:
    """Captum's IntegratedGradients on the same clip: time at each batch size, ratios, agreement.

    ``ours``: ``{batch: (seconds, map)}`` of our integrated gradients; the ratios printed are ours
    at ``default_batch`` and ours at its best batch, over Captum at its best batch."""
    ours_seconds, ours_map = ours[default_batch]
    ours_best = min(seconds for seconds, _ in ours.values())
    from captum.attr import IntegratedGradients
    method = IntegratedGradients(model)
    baseline = torch.zeros_like(clip)
    best = None
    theirs = None
    for batch in batch_sizes:
        def run() -> None:
            nonlocal theirs
            theirs = method.attribute(clip, baselines=baseline, target=target, n_steps=steps,
                                      method=rule, internal_batch_size=batch)
        seconds = median_seconds(run, repeats, clock)
        print(f"  {'captum IntegratedGradients (batch ' + str(batch) + ')':40s} {seconds:8.2f}s"
              f"  ours (batch {default_batch})/captum x{ours_seconds / seconds:5.2f}", flush=True)
        best = seconds if best is None else min(best, seconds)
    theirs = theirs.detach()
    if rule == "riemann_trapezoid":
        # Captum's trapezoid weights sum to (n-1)/n, ours to 1.
        theirs = theirs * steps / (steps - 1)
    difference = float((ours_map - theirs).abs().max() / theirs.abs().max())
    print(f"  {'captum, best batch':40s} {best:8.2f}s  ours (batch {default_batch}, the default)"
          f"/captum x{ours_seconds / best:5.2f}, ours best/captum best x{ours_best / best:5.2f};"
          f"  max rel. difference {difference:.1e}", flush=True)


def grad_cam_peer(model: nn.Module, clip: torch.Tensor, target: int, ours_map: torch.Tensor,
                  ours_seconds: float, repeats: int, clock: str) -> None:
    """pytorch-grad-cam's GradCAM (5-D) at our layer: time, ratio, agreement."""
    import torch.nn.functional as F
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    layer = model.layer(None)
    result: dict = {}

    def run() -> None:
        with GradCAM(model, target_layers=[layer]) as method:
            targets = [ClassifierOutputTarget(target)]
            result["maps"] = method(clip, targets=targets)
            recorded = method.activations_and_grads
            activation = recorded.activations[0].numpy()
            gradient = recorded.gradients[0].numpy()
            result["grid"] = method.get_cam_image(clip, layer, targets, activation, gradient)

    seconds = median_seconds(run, repeats, clock)
    theirs = torch.from_numpy(result["maps"]).unsqueeze(1)                  # (N, 1, T, H, W)
    grid = torch.from_numpy(result["grid"]).clamp(min=0).unsqueeze(1)       # (N, 1, T', h', w')
    their_weights_trilinear = F.interpolate(grid.double(), size=tuple(clip.shape[2:]),
                                            mode="trilinear", align_corners=False)
    ours = unit_scaled(ours_map)
    against_output = float((ours - unit_scaled(theirs)).abs().max())
    against_weights = float((ours - unit_scaled(their_weights_trilinear)).abs().max())
    print(f"  {'pytorch-grad-cam GradCAM (5-D)':40s} {seconds:8.2f}s"
          f"  ours/peer x{ours_seconds / seconds:5.2f}  max difference in [0, 1]: "
          f"{against_output:.1e} (its spline upsampling), {against_weights:.1e} "
          f"(its weights, trilinear)", flush=True)


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="i3d", help="registry name (default i3d)")
    parser.add_argument("--pretrain_dataset", default=None,
                        help="weights to load (default: the model's first)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help="comma-separated method names")
    parser.add_argument("--steps", type=int, default=25, help="IG steps and SmoothGrad samples")
    parser.add_argument("--repeats", type=int, default=1, help="runs per method (median)")
    parser.add_argument("--reference_repeats", type=int, default=5,
                        help="runs of the single forward + backward references (median)")
    parser.add_argument("--batch_sizes", default="1,5",
                        help="internal_batch_size values timed for IG and SmoothGrad")
    parser.add_argument("--frames", type=int, default=None, help="default: the model's clip length")
    parser.add_argument("--size", type=int, default=None, help="default: the model's crop")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                        help="wall time, or process CPU time on a machine shared with other jobs")
    parser.add_argument("--no_loop", action="store_true",
                        help="skip the one-step-at-a-time reference loops")
    parser.add_argument("--ig_integration", default="gausslegendre", choices=INTEGRATION_RULES,
                        help="IG rule, ours and Captum's (default gausslegendre, Captum's default)")
    parser.add_argument("--no_peers", action="store_true",
                        help="skip Captum and pytorch-grad-cam")
    parser.add_argument("--captum_batch_sizes", default="1,5,25",
                        help="internal_batch_size values tried for Captum's IG (best one kept)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = get_model_spec(args.model)
    dataset = args.pretrain_dataset or spec.pretrain_datasets[0]
    # The adapter is the model every method gets: it knows the default CAM layer.
    model = spec.adapter(load_model(args.model, dataset))
    frames = args.frames or spec.clip_length
    size = args.size or spec.crop
    clip = torch.randn(1, 3, frames, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = model(clip)
    if spec.task == "classification":
        target = int(output.argmax(1))
    else:
        truth = output.detach() + 1.0
        target = lambda out: -(out - truth.to(out)).square().flatten(1).sum(1)  # noqa: E731
    target_fn = as_target_fn(target)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    captum_batch_sizes = [int(b) for b in args.captum_batch_sizes.split(",") if b.strip()]
    peers = not args.no_peers and spec.task == "classification"
    print(f"model {args.model}, clip 1x3x{frames}x{size}x{size}, {torch.get_num_threads()} "
          f"threads, steps/samples {args.steps}, repeats {args.repeats}, {args.clock} clock")

    # Untimed warm-up: the first passes allocate memory and build kernels.
    forward_backward_with_parameters(model, clip, target_fn)
    get_method("grad")(model, clip, target)
    full = median_seconds(lambda: forward_backward_with_parameters(model, clip, target_fn),
                          args.reference_repeats, args.clock)
    input_only = median_seconds(lambda: get_method("grad")(model, clip, target),
                                args.reference_repeats, args.clock)

    def add(name: str, seconds: float, loop: float | None = None) -> None:
        print(f"  {name:40s} {seconds:8.2f}s  x{seconds / full:6.2f} params-pass"
              f"  x{seconds / input_only:6.2f} input-pass"
              + (f"  x{seconds / loop:5.2f} loop" if loop else ""), flush=True)

    print(f"  {'fwd+bwd (params)':40s} {full:8.2f}s\n  {'fwd+bwd (input)':40s} {input_only:8.2f}s",
          flush=True)
    for name in methods:
        if name not in METHODS:
            raise SystemExit(f"unknown method {name!r}")
        declared = METHODS[name].options
        options = {k: v for k, v in {"num_iter": args.steps, "seed": 0, "ig_baseline": "zeros",
                                     "ig_integration": args.ig_integration}.items()
                   if k in declared}
        loop_seconds = None
        if name in ("integrated_grad", "smooth_grad") and not args.no_loop:
            if name == "integrated_grad":
                def point(step: int) -> torch.Tensor:
                    return clip * (step / args.steps)  # zero baseline, left Riemann sum
            else:
                generator = torch.Generator().manual_seed(0)
                noise = 0.15 * float(clip.max() - clip.min())

                def point(step: int) -> torch.Tensor:
                    return clip + noise * torch.randn(clip.shape, generator=generator)
            loop_seconds = median_seconds(
                lambda: reference_loop(model, clip, target_fn, args.steps, point), args.repeats,
                args.clock)
            add(f"{name} reference loop", loop_seconds)
        if name in ("integrated_grad", "smooth_grad"):
            results: dict = {}
            for batch in batch_sizes:
                def run() -> None:
                    results[batch] = explain(name, model, clip, target, **options,
                                             internal_batch_size=batch).maps
                results[f"s{batch}"] = median_seconds(run, args.repeats, args.clock)
                add(f"{name} (internal_batch_size={batch})", results[f"s{batch}"], loop_seconds)
            if name == "integrated_grad" and peers and _installed("captum"):
                default = default_internal_batch_size(clip.device)
                if default not in batch_sizes:
                    raise SystemExit(f"--batch_sizes must include the default batch {default}")
                captum_peer(model, clip, target, args.steps, args.ig_integration,
                            captum_batch_sizes,
                            {b: (results[f"s{b}"], results[b]) for b in batch_sizes}, default,
                            args.repeats, args.clock)
        else:
            result: dict = {}

            def run() -> None:
                result["maps"] = explain(name, model, clip, target, **options).maps
            try:
                seconds = median_seconds(run, args.repeats, args.clock)
            except ValueError as error:  # e.g. CAM on a network without GAP + linear head
                print(f"  {name:40s} not applicable: {error}", flush=True)
                continue
            add(name, seconds)
            if name == "grad_cam" and peers and _installed("pytorch_grad_cam"):
                def run_3d() -> None:
                    result["3d"] = explain(name, model, clip, target, **options,
                                           cam_pooling="3d").maps
                seconds_3d = median_seconds(run_3d, args.repeats, args.clock)
                add("grad_cam (cam_pooling=3d)", seconds_3d)
                grad_cam_peer(model, clip, target, result["3d"], seconds_3d, args.repeats,
                              args.clock)


def _installed(module: str) -> bool:
    """Whether a peer library can be imported (a note is printed when it cannot)."""
    try:
        importlib.import_module(module)
    except ImportError:
        print(f"note: {module} is not installed; its comparison is skipped")
        return False
    return True


if __name__ == "__main__":
    main()
