"""Wall time of the gradient and CAM methods relative to one forward + backward pass.

Usage (from the repository root)::

    python -m bench.bench_gradients --model i3d --steps 25 --repeats 1
    python -m bench.bench_gradients --model demo_3dcnn --methods grad,integrated_grad --repeats 3

For every method it prints the median wall time over ``--repeats`` runs and its ratio to

- ``fwd+bwd (params)``: one forward + ``backward()`` with parameter gradients, the way the
  reference demo computes a gradient, and
- ``fwd+bwd (input)``: one forward + input-only ``autograd.grad`` (parameters frozen).

Integrated gradients and SmoothGrad are also timed at each ``--batch_sizes`` value and against
a one-step-at-a-time loop written like the reference (parameter gradients, ``.backward()``,
one pass per step). Target: IG with 25 steps costs less than 25 forward + backward passes.
On a machine shared with other jobs, ``--clock cpu`` times this process's CPU use instead of
the wall clock (use ``--threads 1`` with it). Weights do not change the timing; when a model's weights are not installed an untrained copy
of the architecture is timed (and the script says so).
"""
from __future__ import annotations

import argparse
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
from vis_methods import METHODS, explain  # noqa: E402
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
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = get_model_spec(args.model)
    dataset = args.pretrain_dataset or spec.pretrain_datasets[0]
    model = load_model(args.model, dataset)
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
        options = {k: v for k, v in {"num_iter": args.steps, "seed": 0,
                                     "ig_baseline": "zeros"}.items() if k in declared}
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
            for batch in batch_sizes:
                seconds = median_seconds(lambda: explain(
                    name, model, clip, target, **options, internal_batch_size=batch),
                    args.repeats, args.clock)
                add(f"{name} (internal_batch_size={batch})", seconds, loop_seconds)
        else:
            seconds = median_seconds(lambda: explain(name, model, clip, target, **options),
                                     args.repeats, args.clock)
            add(name, seconds)


if __name__ == "__main__":
    main()
