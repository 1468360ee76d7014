"""The clip explorer: data it embeds (checked against the writers' colours), escaping, the run's
pages, a windowed run's timeline page, and -- in headless Chromium -- what a person sees and
does on the pages."""
import base64
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from utils.render import explorer
from utils.render import figures as vis

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
EVIL = '</script><script>document.title="pwned"</script><b>bold</b>'


def _have_browser():
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return "no chromium at /usr/bin/chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (requirements-test.txt)"
    return ""


NO_BROWSER = _have_browser()
# CI sets this (.ci/run): there a missing browser is a failure, not a skip
REQUIRED = os.environ.get("VIDEOVISUAL_REQUIRE_BROWSER") == "1"
browser_test = pytest.mark.skipif(bool(NO_BROWSER) and not REQUIRED, reason=NO_BROWSER or "-")


def test_browser_present_where_required():
    if not REQUIRED:
        pytest.skip("VIDEOVISUAL_REQUIRE_BROWSER is not set (CI sets it)")
    assert not NO_BROWSER, NO_BROWSER


def _synthetic_page(clip=EVIL):
    """Two maps over 6 frames of 20x24 px with known values: a ramp and its mirror."""
    t, y, x = np.meshgrid(np.arange(6), np.arange(20), np.arange(24), indexing="ij")
    # smooth pictures (JPEG keeps them to a few levels), different in every frame
    frames = np.stack([x * 8 + t * 10, y * 9 + 20, 200 - t * 30 + 0 * x], axis=-1).astype(np.uint8)
    ramp = np.broadcast_to(np.linspace(0, 1, 24, dtype=np.float32), (6, 20, 24)).copy()
    ramp *= np.linspace(0.2, 1, 6, dtype=np.float32)[:, None, None]
    views = [explorer.view_entry(ramp, method="grad_cam", target=EVIL, scores={"gap": 0.25}),
             explorer.view_entry(ramp[:, :, ::-1].copy(), method="occlusion", target="b")]
    return frames, [ramp, ramp[:, :, ::-1]], explorer.page_data(frames, views, clip=clip,
                                                               label="<i>x</i>", model="m")


# ----------------------------------------------------------------------------- no browser

def test_quantised_map_picks_the_writers_colours():
    rng = np.random.default_rng(0)
    for style, signed in (("jet", False), ("diverging", True), ("inferno", False)):
        m = rng.uniform(-1 if signed else 0, 1, (3, 7, 9)).astype(np.float32)
        black = np.zeros(m.shape + (3,), np.float32)
        # on black frames the overlay is alpha * colour: the colour of each pixel's quantised row
        expected = np.abs(m)[..., None] ** 0.8 * vis.colour_lut(style)[explorer.quantise(m, signed)]
        np.testing.assert_allclose(vis.overlay(black, m, style), expected, atol=1e-6)
    assert explorer.quantise(np.array([0.0, 0.5, 1.0]), False).tolist() == [0, 128, 255]
    assert explorer.quantise(np.array([-1.0, 0.0, 1.0]), True).tolist() == [0, 128, 255]
    tables = explorer.colour_tables()
    assert tables["jet"].shape == (256, 3) and tables["jet"].dtype == np.uint8
    np.testing.assert_array_equal(tables["inferno"], np.round(vis.colour_lut("inferno") * 255))


def test_script_json_cannot_close_the_script():
    text = explorer.script_json({"a": EVIL, "b": "\u2028&"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": EVIL, "b": "\u2028&"}


def test_page_is_offline_and_escaped():
    _, maps, data = _synthetic_page()
    page = explorer.viewer_html(data)
    assert "<script>document.title" not in page and "<b>bold" not in page
    assert page.count("<script") == 2                       # the JSON block and the code
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src 'none'" in csp and "connect-src" not in csp and "http" not in csp
    assert not re.search(r'(src|href)="(?!data:)', page)     # nothing fetched
    block = re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>', page, re.S)
    back = json.loads(block.group(1))
    assert back["clip"] == EVIL and back["count"] == 6 and len(back["frames"]) == 6
    q = np.frombuffer(base64.b64decode(back["views"][1]["map"]), np.uint8).reshape(6, 20, 24)
    np.testing.assert_array_equal(q, explorer.quantise(maps[1], False))
    with pytest.raises(ValueError, match="does not match"):
        explorer.page_data(np.zeros((5, 20, 24, 3), np.uint8), data["views"], clip="c")


def test_viewer_repr_html_is_an_iframe_with_the_page():
    _, _, data = _synthetic_page()
    viewer = explorer.Viewer(explorer.viewer_html(data))
    text = viewer._repr_html_()
    assert text.startswith('<iframe class="videovisual-explorer" sandbox="allow-scripts"')
    assert "<script" not in text.split("srcdoc=", 1)[1]       # all of the page is quoted
    assert "data-explorer" in text


def _run(out: Path, videos: Path):
    command = [sys.executable, "main.py", "--videos_dir", str(videos), "--model", "demo_3dcnn",
               "--no_gpu", "--vis_method", "grad_cam,integrated_grad", "--num_iter", "2",
               "--topk", "2", "--formats", "png,npy", "--quiet", "--out_dir", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One synthetic clip explained by two methods for the top-2 classes."""
    root = tmp_path_factory.mktemp("explorer_run")
    videos = root / "videos"
    videos.mkdir()
    source = sorted((REPO / "test_data" / "synthetic").iterdir())[0]
    (videos / source.name).symlink_to(source)
    _run(root / "out", videos)
    return root / "out", source.name


def test_run_writes_one_page_per_clip_beside_each_methods_outputs(small_run):
    out, clip = small_run
    pages = [out / m / "demo_3dcnn" / explorer.page_name(clip) for m in ("grad_cam", "integrated_grad")]
    assert all(p.is_file() for p in pages) and pages[0].read_text() == pages[1].read_text()
    assert not list(out.rglob(".*explore*"))                 # no temporary left
    index = (out / "grad_cam" / "demo_3dcnn" / "index.html").read_text()
    assert f'href="{explorer.page_name(clip).replace(" ", "%20")}"' in index
    data = _page_data(pages[0])
    labels = [v["label"] for v in data["views"]]
    assert len(labels) == 4 and sum(lab.startswith("grad_cam") for lab in labels) == 2
    viewer = explorer.show_folder(out, clip)
    assert "data-explorer" in viewer._repr_html_()
    with pytest.raises(FileNotFoundError, match="no nothing.explore.html"):
        explorer.show_folder(out, "nothing")


def _page_data(path: Path) -> dict:
    page = path.read_text()
    block = re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>', page, re.S)
    return json.loads(block.group(1))


def _expected_map(npy: Path) -> np.ndarray:
    """The saved map through the writers' normalisation and the page's quantisation."""
    return explorer.quantise(vis.normalize_map(vis.apply_polarity(np.load(npy), "positive")), False)


def test_run_pages_carry_the_saved_maps(small_run):
    out, clip = small_run
    folder = out / "grad_cam" / "demo_3dcnn"
    data = _page_data(folder / explorer.page_name(clip))
    shape = (data["count"], data["height"], data["width"])
    npys = {m: sorted((out / m / "demo_3dcnn").glob("*.npy")) for m in ("grad_cam", "integrated_grad")}
    assert all(len(v) == 2 for v in npys.values())
    embedded = [np.frombuffer(base64.b64decode(v["map"]), np.uint8).reshape(shape) for v in data["views"]]
    for files in npys.values():
        for npy in files:
            expected = _expected_map(npy)
            assert any(np.array_equal(expected, e) for e in embedded), npy.name


TIMELINE_FPS = 25.0


@pytest.fixture(scope="module")
def timeline_run(tmp_path_factory):
    """A windowed run (16-frame windows every 8 frames) over 96 synthetic frames: 11 windows."""
    import main
    from utils.demo.long_video import joined_frames
    from utils.render.encoders import Mp4Writer
    root = tmp_path_factory.mktemp("timeline_run")
    clips, _ = joined_frames((32, 40, 24), seed=2)
    with Mp4Writer(root / "walk.mp4", TIMELINE_FPS, crf=12) as writer:
        for frame in np.concatenate(clips):
            writer.write(frame)
    out = root / "out"
    code = main.main(["--videos_dir", str(root / "walk.mp4"), "--model", "demo_3dcnn", "--no_gpu",
                      "--window", "16", "--stride", "8", "--formats", "png", "--quiet",
                      "--target", "pred", "--out_dir", str(out)])
    assert code == 0
    return out / "grad_cam" / "demo_3dcnn", "walk"


def _timeline_data(path: Path) -> dict:
    block = re.search(r'<script type="application/json" id="timeline-data">(.*?)</script>',
                      path.read_text(), re.S)
    return json.loads(block.group(1))


def test_timeline_page_carries_the_csv(timeline_run):
    import pandas as pd
    from utils.render import timeline, timeline_page
    folder, clip = timeline_run
    page_path = folder / explorer.page_name(clip)
    page = page_path.read_text()
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert csp == explorer.CSP and not re.search(r'(src|href)="(?!data:)', page)
    index = (folder / "index.html").read_text()
    assert f'href="{explorer.page_name(clip)}"' in index          # the clip's name opens it
    table = pd.read_csv(folder / f"{clip}_timeline.csv")
    data = _timeline_data(page_path)
    windows = data["windows"]
    assert len(windows) == len(table) == 11
    assert data["duration"] == pytest.approx(96 / TIMELINE_FPS) == table["end_s"].max()
    names = [c for c in table.columns if c.startswith("p:")]
    shown = timeline.shown_classes(table[names].to_numpy(float), [n[2:] for n in names], 9)
    assert [c["name"] for c in data["classes"]] == [names[k][2:] for k in shown]
    for w, (_, row) in zip(windows, table.iterrows()):
        assert w["window"] == row["window"] and w["status"] == row["status"] == "ok"
        assert (w["start_s"], w["end_s"]) == (row["start_s"], row["end_s"])
        assert (w["top1"], w["target"]) == (row["top1"], row["target"])
        assert w["top1_p"] == pytest.approx(row["top1_p"], abs=1e-6)
        assert w["target_p"] == pytest.approx(row["target_p"], abs=1e-6)
        np.testing.assert_allclose(w["p"], [row["p:" + c["name"]] for c in data["classes"]],
                                   atol=1e-6)
        stored = np.load(folder / f"{clip}_maps" / f"w{row['window']:06d}.npy")[0]
        middle = vis.normalize_map(stored)[stored.shape[0] // 2]
        rows = np.frombuffer(base64.b64decode(w["map"]), np.uint8).reshape(data["map_shape"])
        np.testing.assert_array_equal(rows, explorer.quantise(middle, data["signed"]))
        assert w["frame"].startswith("data:image/jpeg;base64,")
    # the explained class per window (--target pred: its top class) is marked in the legend
    assert {c["name"] for c in data["classes"] if c["explained"]} == \
        set(table["target"]) & {c["name"] for c in data["classes"]}
    # the window a moment of the video belongs to: covering it, nearest centre
    assert timeline_page.window_at(1.50, table["start_s"], table["end_s"]) == 4
    assert timeline_page.window_at(0.20, table["start_s"], table["end_s"]) == 0


# ----------------------------------------------------------------------------- in the browser

class _Browser:
    def __init__(self, playwright):
        self.browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        self.errors, self.requests = [], []

    def open(self, url, wait="[data-ready='1']"):
        page = self.browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: m.type in ("error", "warning") and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: None if r.url.startswith(("data:", "file:", "blob:"))
                else self.requests.append(r.url))
        page.goto(url)
        if wait:
            page.wait_for_selector(wait, state="attached", timeout=15000)
        return page


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        handle = _Browser(playwright)
        yield handle
        handle.browser.close()


def _canvas(page, panel=0, name="frame"):
    """The RGB pixels of a panel's canvas, as drawn."""
    values = page.evaluate("""([i, name]) => {
        const c = document.querySelectorAll('.panel canvas.' + name)[i];
        return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)];
    }""", [panel, name])
    width, height, flat = values
    return np.array(flat, np.uint8).reshape(height, width, 4)[..., :3]


def _set(page, selector, value):
    page.eval_on_selector(selector, """(e, v) => { e.value = v;
        e.dispatchEvent(new Event('input', {bubbles: true}));
        e.dispatchEvent(new Event('change', {bubbles: true})); }""", str(value))


def _expected_pixels(frame, rows, lut, opacity, signed=False):
    v = (rows.astype(np.float64) + 0.5) / 256
    magnitude = np.abs(2 * v - 1) if signed else v
    alpha = opacity * magnitude ** 0.8
    f = frame.astype(np.float64)
    return np.round(f + alpha[..., None] * (lut[rows].astype(np.float64) - f))


@browser_test
def test_browser_player_slider_opacity_keys_and_chart(browser, tmp_path):
    frames, maps, data = _synthetic_page()
    path = explorer.write_page(tmp_path / "page.explore.html", explorer.viewer_html(data))
    page = browser.open(path.as_uri())
    # the clip name with a script in it shows as text, and did not run
    assert page.inner_text("#clip-name") == EVIL and page.title() == EVIL
    assert page.locator(".panel").count() == 1
    # opacity 0: the decoded frame; opacity 100: frame blended with the map's colours
    _set(page, "#opacity", 0)
    plain = _canvas(page)
    assert np.abs(plain.astype(int) - frames[0]).mean() < 3              # JPEG of frame 0
    _set(page, "#opacity", 100)
    full = _canvas(page)
    q = explorer.quantise(maps[0], False)
    lut = explorer.colour_tables()[data["views"][0]["style"]]      # the method's own colours
    np.testing.assert_allclose(full, _expected_pixels(plain, q[0], lut, 1.0), atol=1)
    assert np.abs(full.astype(int) - plain).mean() > 10
    _set(page, "#opacity", 40)
    np.testing.assert_allclose(_canvas(page), _expected_pixels(plain, q[0], lut, 0.4), atol=1)
    _set(page, "#opacity", 100)
    # the frame slider moves the drawn frame and the chart's cursor
    _set(page, "#frame", 4)
    assert page.get_attribute("#explorer", "data-frame") == "4"
    assert page.get_attribute(".panel canvas.chart", "data-cursor") == "4"
    _set(page, "#opacity", 0)
    frame4 = _canvas(page)
    assert np.abs(frame4.astype(int) - frames[4]).mean() < 3
    _set(page, "#opacity", 100)
    np.testing.assert_allclose(_canvas(page), _expected_pixels(frame4, q[4], lut, 1.0), atol=1)
    chart = _canvas(page, name="chart")
    slot = chart.shape[1] / 6
    # the cursor is drawn (dark outline) around slot 4 only
    dark = (chart.sum(axis=2) < 100).any(axis=0)
    assert dark[int(4 * slot) + 2] and not dark[int(1 * slot) + 2]
    # keyboard: right and left step one frame
    page.keyboard.press("ArrowRight")
    assert page.get_attribute("#explorer", "data-frame") == "5"
    page.keyboard.press("ArrowRight")                                   # stays on the last frame
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    assert page.get_attribute("#explorer", "data-frame") == "3"
    # a click on the chart seeks to the frame under the pointer
    box = page.locator(".panel canvas.chart").bounding_box()
    page.mouse.click(box["x"] + box["width"] * (1.5 / 6), box["y"] + box["height"] / 2)
    assert page.get_attribute("#explorer", "data-frame") == "1"
    assert page.input_value("#frame") == "1"
    # play advances frames on its own; pause stops
    _set(page, "#speed", 16)
    page.click("#play")
    page.wait_for_function("() => document.getElementById('explorer').dataset.frame !== '1'", timeout=3000)
    page.click("#play")
    stopped = page.get_attribute("#explorer", "data-frame")
    page.wait_for_timeout(300)
    assert page.get_attribute("#explorer", "data-frame") == stopped
    # a colour map chosen in the page recolours the same rows
    _set(page, "#frame", 0)
    _set(page, "#cmap", "viridis")
    np.testing.assert_allclose(_canvas(page), _expected_pixels(
        plain, q[0], explorer.colour_tables()["viridis"], 1.0), atol=1)
    assert page.inner_text(".panel dl") == "gap\n0.25"
    assert browser.errors == [] and browser.requests == []
    page.close()


@browser_test
def test_browser_switching_and_side_by_side(browser, small_run):
    out, clip = small_run
    path = out / "grad_cam" / "demo_3dcnn" / explorer.page_name(clip)
    data = _page_data(path)
    page = browser.open(path.as_uri())
    shape = (data["count"], data["height"], data["width"])
    lut = explorer.colour_tables()
    _set(page, "#frame", 7)
    _set(page, "#opacity", 0)
    frame = _canvas(page)
    _set(page, "#opacity", 100)
    npys = {str(npy.relative_to(out)): npy for m in ("grad_cam", "integrated_grad")
            for npy in (out / m / "demo_3dcnn").glob("*.npy")}
    for index, view in enumerate(data["views"]):
        # show only this map: the canvas is that method's saved map through the LUT
        for j in range(len(data["views"])):
            page.set_checked(f"#view-{j}", j == index)
        assert page.locator(".panel").count() == 1
        assert page.inner_text(".panel h2") == view["label"]
        rows = np.frombuffer(base64.b64decode(view["map"]), np.uint8).reshape(shape)
        matching = [s for s, npy in npys.items() if np.array_equal(_expected_map(npy), rows)]
        assert len(matching) == 1 and matching[0].startswith(view["method"] + "/")
        expected = _expected_pixels(frame, _expected_map(npys[matching[0]])[7], lut[view["style"]],
                                    1.0, view["signed"])
        np.testing.assert_allclose(_canvas(page), expected, atol=1)
    # all four side by side on one cursor
    for j in range(len(data["views"])):
        page.set_checked(f"#view-{j}", True)
    assert page.locator(".panel").count() == 4
    page.keyboard.press("ArrowLeft")
    cursors = [page.get_attribute(f".panel:nth-child({k + 1}) canvas.chart", "data-cursor") for k in range(4)]
    assert cursors == ["6"] * 4
    drawn = [_canvas(page, k) for k in range(4)]
    assert len({d.tobytes() for d in drawn}) == 4                   # four different maps
    assert browser.errors == [] and browser.requests == []
    page.close()


class _Rows(HTMLParser):
    def __init__(self):
        super().__init__()
        self.visible = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-clip" in attrs and "hidden" not in attrs:
            self.visible.append(attrs["data-clip"])


@browser_test
def test_browser_index_pages_filters_and_links(browser, tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    from bench_explorer import synthetic_summary
    from utils.render import report
    summary = synthetic_summary(300, tmp_path)
    index = report.write_report(tmp_path, summary)
    page = browser.open(index.as_uri(), wait="[data-rows='ready']")
    rows = _Rows()
    rows.feed(page.content())
    assert len(rows.visible) == 100 and rows.visible[0] == summary["clip"][0]
    assert page.inner_text("#page-text").strip() == "page 1 of 3"
    # pictures load lazily, and never those of the rows on other pages
    assert page.evaluate("() => Array.from(document.querySelectorAll('tr[hidden] img'))"
                         ".filter(i => i.complete && i.naturalWidth > 0).length") == 0
    page.click("#page-next")
    rows = _Rows()
    rows.feed(page.content())
    assert rows.visible[0] == summary["clip"][100]
    # pictures of hidden rows are not loaded: only the first page's
    assert int(page.get_attribute("body", "data-media-total")) == (summary.status[:100] == "ok").sum()
    # score range on probability
    _set(page, "#score-key", "probability")
    _set(page, "#score-min", "0.5")
    _set(page, "#score-max", "0.6")
    expected = summary[(summary.probability >= 0.5) & (summary.probability <= 0.6)]
    assert page.inner_text("#shown") == f"{len(expected)} of 300 rows"
    rows = _Rows()
    rows.feed(page.content())
    assert rows.visible == list(expected["clip"][:100])
    _set(page, "#score-min", "")
    _set(page, "#score-max", "")
    page.check("#only-mispredicted")
    wrong = summary[(summary.label != summary.prediction) & (summary.status == "ok")]
    assert page.inner_text("#shown") == f"{len(wrong)} of 300 rows"
    page.uncheck("#only-mispredicted")
    page.check("#only-failures")
    assert page.inner_text("#shown") == f"{(summary.status != 'ok').sum()} of 300 rows"
    page.uncheck("#only-failures")
    _set(page, "#filter", "clip-00042")
    assert page.inner_text("#shown") == "1 of 300 rows"
    href = page.get_attribute("tr:not([hidden]) a.explore", "href")
    assert href == "clip-00042.explore.html"
    assert browser.errors == [] and browser.requests == []
    page.close()


@browser_test
def test_browser_notebook_iframe_runs_the_viewer(browser, tmp_path):
    frames, _, data = _synthetic_page()
    shell = tmp_path / "notebook.html"
    shell.write_text("<!DOCTYPE html><html><body>" + explorer.Viewer(explorer.viewer_html(data))._repr_html_()
                     + "</body></html>")
    page = browser.open(shell.as_uri(), wait=None)
    frame = page.frame_locator("iframe.videovisual-explorer")
    frame.locator("[data-ready='1']").wait_for(state="attached", timeout=15000)
    assert frame.locator("#clip-name").inner_text() == EVIL
    assert frame.locator(".panel").count() == 1
    assert browser.errors == [] and browser.requests == []
    page.close()


def _hand_window(table, time):
    """The window a click at ``time`` shows, worked out from the CSV: those covering the time,
    the one whose centre is nearest."""
    covering = [(abs((r.start_s + r.end_s) / 2 - time), r.window) for r in table.itertuples()
                if r.start_s <= time < r.end_s]
    return min(covering)[1]


@browser_test
def test_browser_timeline_click_seeks_to_the_covering_window(browser, timeline_run):
    import pandas as pd
    from PIL import Image
    folder, clip = timeline_run
    table = pd.read_csv(folder / f"{clip}_timeline.csv")
    duration = float(table["end_s"].max())
    page = browser.open((folder / explorer.page_name(clip)).as_uri())
    assert page.get_attribute("#timeline-page", "data-window") == "0"
    box = page.locator("#timeline").bounding_box()
    shown = {}
    for time in (1.50, 0.20, 3.70, 2.10):
        page.mouse.click(box["x"] + box["width"] * time / duration, box["y"] + box["height"] / 2)
        clicked = float(page.get_attribute("#timeline-page", "data-time"))
        assert clicked == pytest.approx(time, abs=2 * duration / box["width"])
        expected = _hand_window(table, clicked)
        assert expected == _hand_window(table, time)          # not on a window's edge
        assert page.get_attribute("#timeline-page", "data-window") == str(expected)
        assert page.input_value("#window") == str(expected)
        row = table.iloc[expected]
        assert page.inner_text("#time-text") == (
            f"{clicked:.2f} s: window {expected} of 11 ({row.start_s:.2f}-{row.end_s:.2f} s)")
        assert page.inner_text("#window-text").startswith(f"top: {row.top1} {row.top1_p:.3f}")
        page.wait_for_function(f"() => document.getElementById('timeline-page').dataset.drawn === '{expected}'",
                               timeout=5000)
        _set(page, "#opacity", 0)
        page.wait_for_function(f"() => document.getElementById('timeline-page').dataset.drawn === '{expected}'",
                               timeout=5000)
        drawn = _page_canvas(page, "frame")
        _set(page, "#opacity", 100)
        # the window's stored middle frame, drawn 3x (JPEG and smoothing: within a few levels)
        stored = np.asarray(Image.open(folder / f"{clip}_maps" / f"w{expected:06d}.png").convert("RGB"))
        scale = drawn.shape[0] // stored.shape[0]
        blocks = drawn.reshape(stored.shape[0], scale, stored.shape[1], scale, 3).mean(axis=(1, 3))
        assert np.abs(blocks - stored).mean() < 6
        shown[expected] = drawn
        # the cursor: a red line on the timeline at the clicked moment
        line = _page_canvas(page, "timeline")
        x = int(clicked / duration * line.shape[1])
        column = line[:, max(0, x - 1):x + 2].reshape(-1, 3).astype(int)
        assert ((column[:, 0] > 180) & (column[:, 1] < 60)).any()
    assert len(shown) == 4 and len({d.tobytes() for d in shown.values()}) == 4
    page.keyboard.press("ArrowRight")
    assert page.get_attribute("#timeline-page", "data-window") == str(list(shown)[-1] + 1)
    assert browser.errors == [] and browser.requests == []
    page.close()


def _page_canvas(page, element_id):
    width, height, flat = page.evaluate("""(id) => {
        const c = document.getElementById(id);
        return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)];
    }""", element_id)
    return np.array(flat, np.uint8).reshape(height, width, 4)[..., :3]
