"""Benchmark: the run index (``index.html``) of a large run in headless Chromium.

Writes the summary of ``--rows`` made-up clips (a tiny PNG thumbnail each, a per-frame chart,
two diagnostics, some failures and mispredictions), the index over it, and prints the time to
write the page and, over ``--repeats`` loads, the browser's first contentful paint, the time
the page is parsed and the time its script has paged the rows (the page's own clock).

    python bench/bench_explorer.py                   # 2000 rows
    python bench/bench_explorer.py --rows 10000
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
CLASSES = ("ironing", "abseiling", "juggling", "surfing", "knitting")


def synthetic_summary(rows: int, folder: Path, frames: int = 16, seed: int = 0) -> pd.DataFrame:
    """``rows`` made-up summary rows with a 24x24 PNG thumbnail each in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(rows):
        clip = f"clip-{i:05d}"
        failed = i % 50 == 7
        label = CLASSES[i % len(CLASSES)]
        prediction = label if i % 9 else CLASSES[(i + 1) % len(CLASSES)]
        if not failed:
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / f"{clip}.png")
        importance = rng.random(frames)
        records.append({
            "clip": clip, "label": label, "prediction": "" if failed else prediction,
            "probability": np.nan if failed else round(float(rng.random()), 4),
            "target": label, "method": "grad_cam", "model": "demo", "seconds": round(float(rng.random()), 3),
            "status": "error" if failed else "ok", "error": "unreadable frame" if failed else "",
            "frame_importance": "" if failed else ";".join(f"{v:.4f}" for v in importance / importance.sum()),
            "outputs": "" if failed else f"{clip}.png",
            "completeness_gap": round(float(rng.normal()), 4), "target_score": round(float(rng.random()), 4)})
    return pd.DataFrame(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright
    from utils.render import report

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        summary = synthetic_summary(args.rows, folder)
        started = time.perf_counter()
        index = report.write_report(folder, summary)
        written = time.perf_counter() - started
        print(f"{args.rows} rows: index.html {index.stat().st_size / 1e6:.1f} MB written in {written:.2f} s")
        paints, parsed, ready = [], [], []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            for _ in range(args.repeats):
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(index.as_uri())
                page.wait_for_selector("[data-rows='ready']", state="attached", timeout=60000)
                # the page's own clock, from the start of the navigation
                timing = page.evaluate("""() => [
                    (performance.getEntriesByType('paint').find(e => e.name === 'first-contentful-paint')
                     || {startTime: NaN}).startTime,
                    performance.getEntriesByType('navigation')[0].domInteractive,
                    Number(document.body.dataset.rowsMs)]""")
                paints.append(timing[0] / 1000)
                parsed.append(timing[1] / 1000)
                ready.append(timing[2] / 1000)
                page.close()
            browser.close()
        print(f"first contentful paint {statistics.median(paints):.3f} s, page parsed "
              f"{statistics.median(parsed):.3f} s, rows paged and filterable "
              f"{statistics.median(ready):.3f} s (median of {args.repeats} loads)")


if __name__ == "__main__":
    main()
