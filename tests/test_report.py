"""The HTML report: every clip row present (a failed one with its error), links relative and
pointing at existing files, methods side by side; in a headless browser when there is one:
rows, loaded pictures, sorting from the address."""
from __future__ import annotations

import os
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest

from utils.render import outputs
from utils.render import report
from utils.render import figures as vis

T, H, W = 4, 16, 16
CHROMIUM = "/usr/bin/chromium"


class _Page(HTMLParser):
    """Rows (their attributes and cell texts), links, and the table's sortable headers."""

    def __init__(self):
        super().__init__()
        self.rows, self.links, self.headers, self.svg_rects = [], [], [], 0
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-clip" in attrs:
            self.rows.append({"attrs": attrs, "cells": []})
        elif tag == "td" and self.rows:
            self._cell = []
            self.rows[-1]["cells"].append(self._cell)
        elif tag in ("img", "video") and attrs.get("src"):
            self.links.append(attrs["src"])
        elif tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        elif tag == "th" and "data-key" in attrs:
            self.headers.append(attrs["data-key"])
        elif tag == "rect":
            self.svg_rects += 1
        elif tag in ("script", "link") and (attrs.get("src") or attrs.get("href")):
            self.links.append(attrs.get("src") or attrs.get("href"))

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    for row in page.rows:
        row["cells"] = [" ".join(" ".join(c).split()) for c in row["cells"]]
    return page


def _run(folder: Path, method: str = "grad_cam", formats=("png", "gif")) -> list:
    """Rows of a small run: three clips drawn for real, one failed clip."""
    rng = np.random.default_rng(0)
    rows = []
    clips = [("ironing-a b", "ironing", "ironing", 0.9), ("abseiling-c", "abseiling", "ironing", 0.55),
             ("playing guitar-d", "playing guitar", "playing guitar", 0.72)]
    for index, (clip, label, prediction, probability) in enumerate(clips):
        frames = rng.random((T, H, W, 3)).astype(np.float32)
        shown = np.maximum(rng.standard_normal((T, H, W)), 0).astype(np.float32)
        importance = vis.frame_importance(shown)
        caption = vis.Caption(clip, label, prediction, probability, label, method, "i3d")
        names = outputs.write_visuals(folder, clip, formats, frames, vis.normalize_map(shown), "jet",
                                     caption, outputs.DrawOptions(importance))
        rows.append({"clip": clip, "label": label, "prediction": prediction, "probability": probability,
                     "target": label, "method": method, "model": "i3d", "seconds": 0.5 + index,
                     "status": "ok", "error": "", "frame_importance": ";".join(f"{v:.4f}" for v in importance),
                     "outputs": ";".join(names), "completeness_gap": 0.01 * (index + 1)})
    rows.append({"clip": "broken-e", "method": method, "model": "i3d", "target": "", "seconds": 0.1,
                 "status": "error", "error": "frame 3 of broken-e cannot be read"})
    return rows


def test_report_rows_links_and_failures(tmp_path):
    summary = pd.DataFrame(_run(tmp_path))
    summary.to_csv(tmp_path / "summary.csv", index=False)
    # as the pipeline holds it: read back, empty cells as ''
    summary = pd.read_csv(tmp_path / "summary.csv", keep_default_na=False)
    path = report.write_report(tmp_path, summary)
    assert path == tmp_path / "index.html" and not list(tmp_path.glob(".index*"))
    page = _parse(path.read_text())
    assert [row["attrs"]["data-clip"] for row in page.rows] == [
        "ironing-a b", "abseiling-c", "playing guitar-d", "broken-e"]
    failed = {row["attrs"]["data-clip"]: row["attrs"]["data-failed"] for row in page.rows}
    assert failed == {"ironing-a b": "0", "abseiling-c": "0", "playing guitar-d": "0", "broken-e": "1"}
    mispredicted = [row["attrs"]["data-clip"] for row in page.rows if row["attrs"]["data-mispredicted"] == "1"]
    assert mispredicted == ["abseiling-c"]
    broken = page.rows[-1]["cells"]
    assert broken[5] == "error" and "frame 3 of broken-e cannot be read" in broken[7]
    first = page.rows[0]["cells"]
    assert first[:6] == ["ironing-a b", "ironing", "ironing", "0.900", "ironing", "ok"]
    assert "completeness_gap 0.01" in first[7]
    assert page.svg_rects == 3 * T                                     # one bar per frame per clip
    assert set(page.headers) >= {"clip", "probability", "seconds", "status"}
    # every link relative and pointing at a file that exists; GIF shown, PNG linked
    # each drawn clip's name links its explorer page (written by the run beside the outputs)
    viewers = [link for link in page.links if link.endswith(".explore.html")]
    assert viewers == ["ironing-a%20b.explore.html", "abseiling-c.explore.html",
                       "playing%20guitar-d.explore.html"]
    page.links = [link for link in page.links if link not in viewers]
    assert len(page.links) == 6
    for link in page.links:
        assert not link.startswith(("/", "http:", "https:", "file:")) and "//" not in link
        assert (tmp_path / unquote(link)).is_file(), link
    assert "ironing-a%20b.gif" in page.links and "ironing-a%20b.png" in page.links


def test_report_methods_side_by_side(tmp_path):
    rows = []
    for method in ("grad_cam", "occlusion"):
        folder = tmp_path / method / "i3d"
        for row in _run(folder, method, ("gif", "mp4") if method == "occlusion" else ("gif",)):
            row["folder"] = str(folder) if method == "grad_cam" else f"{method}/i3d"
            rows.append(row)
    rows = [r for r in rows if not (r["method"] == "occlusion" and r["clip"] == "abseiling-c")]
    summary = pd.DataFrame(rows)
    page = _parse(report.write_report(tmp_path, summary, methods=["occlusion", "grad_cam"]).read_text())
    assert len(page.rows) == 4
    assert all(len(row["cells"]) == 5 + 2 * 3 for row in page.rows)
    by_clip = {row["attrs"]["data-clip"]: row["cells"] for row in page.rows}
    assert by_clip["abseiling-c"][5:8] == ["-", "-", "not run"] and by_clip["abseiling-c"][8] == "ok"
    assert {"seconds:occlusion", "seconds:grad_cam"} <= set(page.headers)
    assert any(link.startswith("occlusion/i3d/") and link.endswith(".mp4") for link in page.links)
    # the explorer of the first method with outputs for the clip
    assert [link for link in page.links if link.endswith(".explore.html")] == [
        "occlusion/i3d/ironing-a%20b.explore.html", "grad_cam/i3d/abseiling-c.explore.html",
        "occlusion/i3d/playing%20guitar-d.explore.html"]
    for link in (link for link in page.links if not link.endswith(".explore.html")):
        assert not link.startswith("/") and (tmp_path / unquote(link)).is_file(), link
    with pytest.raises(ValueError, match="methods not in the summary: rise"):
        report.write_report(tmp_path, summary, methods=["rise"])


def _chromium(args, tmp_path):
    profile = tmp_path / "chromium-profile"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=90,
                          env={**os.environ, "HOME": str(tmp_path)})


@pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)),
                    reason="no chromium at /usr/bin/chromium")
def test_report_in_headless_browser(tmp_path):
    run = tmp_path / "run"
    summary = pd.DataFrame(_run(run))
    index = report.write_report(run, summary)
    url = index.as_uri() + "#sort=-probability"
    dom = _chromium(["--dump-dom", url], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = _parse(dom.stdout)
    # sorted by probability, highest first, the failed clip (no probability) last
    assert [row["attrs"]["data-clip"] for row in page.rows] == [
        "ironing-a b", "playing guitar-d", "abseiling-c", "broken-e"]
    assert 'data-sorted="-probability"' in dom.stdout
    assert 'data-media="ready"' in dom.stdout and 'data-media-failed="0"' in dom.stdout
    assert 'data-media-loaded="3"' in dom.stdout
    assert "4 of 4 rows" in dom.stdout
    # filters from the address: only failures
    dom = _chromium(["--dump-dom", index.as_uri() + "#failures=1&sort=clip"], tmp_path)
    shown = [r["attrs"]["data-clip"] for r in _parse(dom.stdout).rows if "hidden" not in r["attrs"]]
    assert shown == ["broken-e"] and "1 of 4 rows" in dom.stdout
    shot = tmp_path / "shot.png"
    result = _chromium([f"--screenshot={shot}", "--window-size=1200,800", index.as_uri()], tmp_path)
    assert result.returncode == 0 and shot.is_file()
    from PIL import Image
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (800, 1200)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200          # pictures, not a blank page
