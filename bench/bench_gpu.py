"""Clips per second on a GPU: I3D (random weights: speed does not depend on them) with Grad-CAM,
integrated gradients (25 steps) and STEP (100 iterations), float32 and bf16, several clips per
batch. Prints one line per setting and writes JSON to $OUT/gpu.json when OUT is set.

    python bench/bench_gpu.py
"""
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models.adapter import ModelAdapter  # noqa: E402
from models.i3d import InceptionI3d  # noqa: E402
from vis_methods import explain  # noqa: E402


def main() -> None:
    torch.backends.cudnn.benchmark = True
    adapter = ModelAdapter(InceptionI3d().cuda().eval(), mean=(0.5,) * 3, std=(0.5,) * 3,
                           target_layer="Mixed_5c")
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}

    def bench(name, method, batch, precision, repeats, **options):
        clips = torch.randn(batch, 3, 16, 224, 224, device="cuda")
        targets = torch.randint(0, 400, (batch,), device="cuda")
        if precision == "bf16":
            clips = clips.contiguous(memory_format=torch.channels_last_3d)
        context = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if precision == "bf16" \
            else contextlib.nullcontext
        with context():
            explain(method, adapter, clips, targets, **options)            # warm-up
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            with context():
                explain(method, adapter, clips, targets, **options)
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - started) / repeats
        results[name] = round(batch / seconds, 2)
        print(f"{name:40s} {batch / seconds:8.2f} clips/s", flush=True)

    for batch in (1, 8, 32):
        for precision in ("fp32", "bf16"):
            bench(f"grad_cam batch {batch} {precision}", "grad_cam", batch, precision, 3)
    for batch, inner in ((1, 25), (4, 8)):
        for precision in ("fp32", "bf16"):
            bench(f"integrated_grad 25 steps batch {batch} {precision}", "integrated_grad",
                  batch, precision, 1, num_iter=25, internal_batch_size=inner * batch)
    for precision in ("fp32", "bf16"):
        bench(f"step 100 iterations batch 2 {precision}", "step", 2, precision, 1, num_iter=100)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
