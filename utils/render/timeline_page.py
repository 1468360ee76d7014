"""The explorer page of a windowed run (``<clip>.explore.html``, linked from the clip's name in
``index.html``): the video's timeline (the shown classes' probability in each window over time,
the explained class's probability as a wide grey band under them, failed windows grey) above the
window's middle frame with its map. A click on the timeline (or the slider, or the left/right
keys) seeks to the window covering that moment (the nearest window centre where windows
overlap, as the MP4 chooses).

Self-contained like the clip explorer (:mod:`utils.render.explorer`): frames as JPEG data URIs,
maps quantised to one byte per pixel at their stored size, coloured and scaled in the browser;
the same content-security policy forbids any request.
"""
from __future__ import annotations

import base64
import html
import math
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

from utils.render import figures
from utils.render import timeline
from utils.render.encoders import jpeg_bytes
from utils.render.explorer import CSP, JPEG_QUALITY, colour_tables, quantise, script_json

TIMELINE_WIDTH = 960       # CSS pixels of the timeline canvas: a click's x maps onto the video's time


def _number(value: Any) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _view(picture: Optional[np.ndarray], display_map: Optional[np.ndarray], signed: bool
          ) -> Tuple[Optional[str], Optional[str]]:
    frame = None if picture is None else \
        "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(picture, JPEG_QUALITY)).decode()
    shown = None if display_map is None else \
        base64.b64encode(quantise(display_map, signed).tobytes()).decode()
    return frame, shown


def page_data(rows: Sequence[dict], class_names: Sequence[str],
              views: Iterable[Tuple[Optional[np.ndarray], Optional[np.ndarray]]], style, *,
              clip: str, model: str = "", method: str = "", explained: str = "") -> Dict[str, Any]:
    """Everything the page draws, as JSON-ready values. ``rows``: the run's rows (the CSV's,
    with ``probabilities`` per window); ``views``: per window ``(picture uint8 (S, S, 3),
    normalised map (h, w))``, ``None`` where missing (failed windows)."""
    chosen = figures.as_style(style)
    count = len(class_names)
    matrix = np.array([r["probabilities"] if r.get("probabilities") is not None
                       else [np.nan] * count for r in rows], dtype=np.float64).reshape(len(rows), count)
    shown = timeline.shown_classes(matrix, class_names, len(timeline.PALETTE) - 1)
    explained_names = {str(r.get("target")) for r in rows if r.get("target")}
    windows, map_shape = [], None
    for row, (picture, display_map) in zip(rows, views):
        frame, shown_map = _view(picture, display_map, chosen.signed)
        if display_map is not None:
            map_shape = list(np.shape(display_map))
        ok = row.get("status") == "ok" and row.get("probabilities") is not None
        windows.append({
            "window": int(row["window"]), "start_s": float(row["start_s"]),
            "end_s": float(row["end_s"]), "status": str(row.get("status", "")),
            "error": str(row.get("error") or ""), "top1": str(row.get("top1") or ""),
            "top1_p": _number(row.get("top1_p")), "target": str(row.get("target") or ""),
            "target_p": _number(row.get("target_p")),
            "p": [float(row["probabilities"][k]) for k in shown] if ok else None,
            "frame": frame, "map": shown_map})
    return {"clip": clip, "model": model, "method": method, "explained": explained,
            "duration": max((w["end_s"] for w in windows), default=0.0),
            "classes": [{"name": class_names[k], "colour": [int(c) for c in
                                                            timeline.PALETTE[r % len(timeline.PALETTE)]],
                         "explained": class_names[k] in explained_names}
                        for r, k in enumerate(shown)],
            "map_shape": map_shape, "style": chosen.colormap, "signed": chosen.signed,
            "lut": base64.b64encode(colour_tables()[chosen.colormap].tobytes()).decode(),
            "windows": windows}


def window_at(time: float, starts: Sequence[float], ends: Sequence[float]) -> int:
    """The window the page seeks to for a moment of the video: among those covering it, the one
    whose centre is nearest (the first on a tie); the nearest centre when none covers it."""
    starts, ends = np.asarray(starts, float), np.asarray(ends, float)
    centres = (starts + ends) / 2
    inside = np.flatnonzero((starts <= time) & (time < ends))
    pool = inside if len(inside) else np.arange(len(starts))
    return int(pool[np.argmin(np.abs(centres[pool] - time))])


_STYLE = """
body{font:13px/1.35 system-ui,sans-serif;margin:10px;color:#222;background:#fff}
h1{font-size:16px;margin:0 0 4px}
.meta{color:#444;margin:0 0 6px}
.bar{display:flex;flex-wrap:wrap;gap:10px;align-items:center;padding:6px 0}
canvas.timeline{display:block;cursor:pointer;border:1px solid #ccc}
#view canvas{width:336px;height:336px;display:block;border:1px solid #ddd}
.legend{display:flex;flex-wrap:wrap;gap:2px 12px;font-size:11px;color:#444;margin:4px 0}
.legend span.swatch{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
.legend .explained{font-weight:bold}
.note{color:#666;font-size:11px}
.error{color:#b00}
"""

_SCRIPT = r"""
(function () {
  var root = document.getElementById('timeline-page');
  var data = JSON.parse(document.getElementById('timeline-data').textContent);
  var wins = data.windows, N = wins.length, D = data.duration || 1;
  var el = function (id) { return document.getElementById(id); };
  var line = el('timeline'), frame = el('frame'), slider = el('window'), opacity = el('opacity');
  var lut = (function (s) { var out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) { out[i] = s.charCodeAt(i); } return out; })(atob(data.lut));
  var state = {w: 0, t: 0};
  function bytes(b64) {
    var s = atob(b64), out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) { out[i] = s.charCodeAt(i); }
    return out;
  }
  function windowAt(t) {
    // the covering window with the nearest centre (as the MP4), else the nearest centre
    var best = -1, bestD = Infinity, covering = false;
    for (var i = 0; i < N; i++) {
      var w = wins[i], inside = w.start_s <= t && t < w.end_s, d = Math.abs((w.start_s + w.end_s) / 2 - t);
      if ((inside && !covering) || (inside === covering && d < bestD)) { best = i; bestD = d; covering = inside; }
    }
    return best;
  }
  function x(t) { return t / D * line.width; }
  // each window is drawn over the time a click selects it: its own part of the overlaps
  var spans = wins.map(function (w, i) {
    var c = (w.start_s + w.end_s) / 2, lo = w.start_s, hi = w.end_s;
    if (i > 0) { lo = Math.max(lo, (c + (wins[i - 1].start_s + wins[i - 1].end_s) / 2) / 2); }
    if (i < N - 1) { hi = Math.min(hi, (c + (wins[i + 1].start_s + wins[i + 1].end_s) / 2) / 2); }
    return [lo, Math.max(lo, hi)];
  });
  function drawTimeline() {
    var ctx = line.getContext('2d', {willReadFrequently: true}), w = line.width, h = line.height;
    ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, w, h);
    var cur = wins[state.w];
    ctx.fillStyle = '#e8e8e8'; ctx.fillRect(x(cur.start_s), 0, x(cur.end_s) - x(cur.start_s), h);
    wins.forEach(function (v, i) {
      if (!v.p) { ctx.fillStyle = '#c8c8c8'; ctx.fillRect(x(spans[i][0]), 0, x(spans[i][1]) - x(spans[i][0]), h); }
    });
    function series(value, colour, width) {
      ctx.strokeStyle = colour; ctx.lineWidth = width; ctx.beginPath();
      var end = null;
      wins.forEach(function (v, i) {
        var p = value(v), lo = spans[i][0], hi = spans[i][1];
        if (p === null || p === undefined) { end = null; return; }
        var y = h - 2 - p * (h - 4);
        if (end === null || lo > end + 1e-9) { ctx.moveTo(x(lo), y); } else { ctx.lineTo(x(lo), y); }
        ctx.lineTo(x(hi), y);
        end = hi;
      });
      ctx.stroke();
    }
    // the explained class's probability: a wide grey band under the classes' own lines
    series(function (v) { return v.target_p; }, 'rgba(0,0,0,0.35)', 7);
    data.classes.forEach(function (c, k) {
      series(function (v) { return v.p ? v.p[k] : null; }, 'rgb(' + c.colour.join(',') + ')', 1.5);
    });
    ctx.strokeStyle = '#d00'; ctx.lineWidth = 2; ctx.beginPath();
    ctx.moveTo(x(state.t), 0); ctx.lineTo(x(state.t), h); ctx.stroke();
  }
  function drawView() {
    var v = wins[state.w], ctx = frame.getContext('2d', {willReadFrequently: true});
    ctx.fillStyle = '#eee'; ctx.fillRect(0, 0, frame.width, frame.height);
    var shown = state.w;
    function overlay() {
      if (!v.map || !data.map_shape) { root.dataset.drawn = shown; return; }
      var mh = data.map_shape[0], mw = data.map_shape[1], q = bytes(v.map);
      var small = document.createElement('canvas'); small.width = mw; small.height = mh;
      var sctx = small.getContext('2d'), image = sctx.createImageData(mw, mh), a = Number(opacity.value) / 100;
      for (var p = 0; p < mw * mh; p++) {
        var m = (q[p] + 0.5) / 256, mag = data.signed ? Math.abs(2 * m - 1) : m;
        for (var c = 0; c < 3; c++) { image.data[4 * p + c] = lut[3 * q[p] + c]; }
        image.data[4 * p + 3] = Math.round(255 * a * Math.pow(mag, 0.8));
      }
      sctx.putImageData(image, 0, 0);
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(small, 0, 0, frame.width, frame.height);
      root.dataset.drawn = shown;
    }
    if (!v.frame) { overlay(); return; }
    var picture = new Image();
    picture.onload = function () {
      if (state.w !== shown) { return; }
      ctx.drawImage(picture, 0, 0, frame.width, frame.height);
      overlay();
    };
    picture.src = v.frame;
  }
  function render() {
    var v = wins[state.w];
    slider.value = state.w;
    root.dataset.window = state.w;
    root.dataset.time = state.t.toFixed(3);
    el('time-text').textContent = state.t.toFixed(2) + ' s: window ' + v.window + ' of ' + N +
      ' (' + v.start_s.toFixed(2) + '-' + v.end_s.toFixed(2) + ' s)';
    el('window-text').textContent = v.status === 'ok'
      ? 'top: ' + v.top1 + ' ' + (v.top1_p === null ? '' : v.top1_p.toFixed(3)) +
        '; map of ' + v.target + ' (p ' + (v.target_p === null ? '-' : v.target_p.toFixed(3)) + ')'
      : 'failed: ' + v.error;
    el('window-text').className = v.status === 'ok' ? '' : 'error';
    drawTimeline(); drawView();
  }
  function seekTime(t) {
    state.t = Math.max(0, Math.min(D, t));
    state.w = windowAt(state.t);
    render();
  }
  function seekWindow(i) {
    state.w = Math.max(0, Math.min(N - 1, i));
    state.t = (wins[state.w].start_s + wins[state.w].end_s) / 2;
    render();
  }
  line.addEventListener('click', function (event) {
    var box = line.getBoundingClientRect();
    seekTime((event.clientX - box.left) / box.width * D);
  });
  slider.max = N - 1;
  slider.addEventListener('input', function () { seekWindow(Number(slider.value)); });
  opacity.addEventListener('input', function () { drawView(); });
  document.addEventListener('keydown', function (event) {
    if (event.key === 'ArrowRight') { seekWindow(state.w + 1); event.preventDefault(); }
    if (event.key === 'ArrowLeft') { seekWindow(state.w - 1); event.preventDefault(); }
  });
  var legend = el('legend');
  data.classes.forEach(function (c) {
    var item = document.createElement('span'), swatch = document.createElement('span');
    swatch.className = 'swatch'; swatch.style.background = 'rgb(' + c.colour.join(',') + ')';
    item.appendChild(swatch); item.appendChild(document.createTextNode(c.name));
    if (c.explained) { item.className = 'explained'; }
    legend.appendChild(item);
  });
  if (N) { seekWindow(0); }
  root.dataset.ready = '1';
})();
"""


def page_html(data: Dict[str, Any]) -> str:
    """The whole page for :func:`page_data`'s ``data``."""
    windows = data["windows"]
    side = 336
    meta = " \u00b7 ".join(p for p in (
        data.get("model") and f"model: {data['model']}",
        data.get("method") and f"method: {data['method']}",
        f"{len(windows)} windows over {data['duration']:.2f} s",
        data.get("explained") and f"explained: {data['explained']}") if p)
    title = html.escape(str(data.get("clip", "")))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{_STYLE}</style></head>
<body>
<div id="timeline-page" data-explorer="1">
<h1 id="clip-name">{title}</h1>
<p class="meta">{html.escape(meta)}</p>
<canvas id="timeline" class="timeline" width="{TIMELINE_WIDTH}" height="120"
 style="width:{TIMELINE_WIDTH}px;height:120px" title="click to seek"></canvas>
<div class="legend" id="legend"><span><span class="swatch" style="background:rgba(0,0,0,0.35)"></span>the explained class (per window; bold: explained somewhere)</span></div>
<p class="note">The probability of each class in each window over the video's time; click to
show the window covering that moment, left/right keys step through windows.</p>
<div class="bar">
<input id="window" type="range" min="0" max="0" value="0" aria-label="window">
<span id="time-text"></span>
<label>opacity <input id="opacity" type="range" min="0" max="100" value="100"></label>
</div>
<div id="view"><canvas id="frame" width="{side}" height="{side}"></canvas>
<p id="window-text"></p></div>
</div>
<script type="application/json" id="timeline-data">{script_json(data)}</script>
<script>{_SCRIPT}</script>
</body></html>
"""
