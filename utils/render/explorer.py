"""The clip explorer: one self-contained HTML page per clip that plays the frames with the
overlay, the per-frame chart under it and every map computed for the clip (methods, targets,
output sets, polarity), switched or side by side on one time cursor.

The page carries the frames as JPEG data URIs and each map quantised to one byte per pixel
(the row of the colour table, as the PNG/GIF writers index it), coloured in a canvas by a
lookup table in the browser, so opacity and colour map change live. No request leaves the page
(a content-security policy forbids them) and it works from ``file://``.

Use from a notebook, with no server::

    from utils.render import explorer
    explorer.show(attribution, frames)                 # an Attribution and (T, H, W, 3) frames
    explorer.show_folder("visual_res/grad_cam/demo_3dcnn", "clip_id")   # a run's clip page

Each returns a :class:`Viewer` that Jupyter shows inline (an ``<iframe srcdoc>``).
"""
from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from utils.io.atomic import write_text
from utils.render import figures
from utils.render.encoders import jpeg_bytes

PAGE_SUFFIX = ".explore.html"
# Colour maps offered in the page: the overlay styles first, then a few perceptual ones.
EXTRA_MAPS = ("viridis", "inferno", "gray")
CSP = ("default-src 'none'; img-src data: blob:; style-src 'unsafe-inline'; "
       "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'")
JPEG_QUALITY = 90
# Summary columns the page shows in its own places (the others are scores and diagnostics).
ROW_SHOWN = ("clip", "output_set", "label", "prediction", "probability", "target", "method",
             "model", "frame_importance", "outputs", "attention", "settings", "status", "error")


def page_name(clip_id: str) -> str:
    """The file name of a clip's page beside its outputs (``clip_id`` already a file stem)."""
    return f"{clip_id}{PAGE_SUFFIX}"


def quantise(display_map: np.ndarray, signed: bool) -> np.ndarray:
    """A normalised map (``[0, 1]``, or ``[-1, 1]`` when ``signed``) as ``uint8`` rows of a
    256-colour table: the row :func:`figures.overlay` colours each value with."""
    display_map = np.asarray(display_map, dtype=np.float32)
    position = (display_map + 1.0) * 0.5 if signed else display_map
    return np.clip((position * figures.LUT_SIZE).astype(np.int32), 0, figures.LUT_SIZE - 1
                   ).astype(np.uint8)


def colour_tables() -> Dict[str, np.ndarray]:
    """Every colour map the page offers: name -> ``(256, 3)`` uint8."""
    tables = {name: figures.colour_lut(name) for name in figures.COLORMAPS}
    tables.update(figures.colour_tables_of([name for name in EXTRA_MAPS if name not in tables]))
    return {name: np.round(np.asarray(t) * 255).astype(np.uint8) for name, t in tables.items()}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _plain(value: Any) -> Any:
    """A diagnostic as JSON: numbers (non-finite as text), texts, lists of those."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else str(number)
    if value is None:
        return ""
    return str(value)


def view_entry(display_map: np.ndarray, *, method: str, target: str = "", set_name: str = "",
               polarity: str = "positive", signed_method: bool = False,
               importance: Optional[Sequence[float]] = None,
               scores: Optional[Mapping[str, Any]] = None, style=None) -> Dict[str, Any]:
    """One map of the page: ``display_map`` ``(T, H, W)`` normalised as the writers show it,
    what it explains, and the summary row's diagnostics and scores (``scores``). ``style``: the
    run's colours (default: the method's own for this polarity)."""
    display_map = np.asarray(display_map, dtype=np.float32)
    chosen = figures.as_style(style) if style is not None else figures.overlay_style(
        signed_method, polarity)
    signed = chosen.signed
    if importance is None:
        importance = figures.frame_importance(display_map)
    label = " / ".join(p for p in (method, target and f"target {target}", set_name,
                                   polarity != "positive" and polarity) if p)
    return {"label": label, "method": method, "target": target, "set": set_name,
            "polarity": polarity, "style": chosen.colormap, "signed": signed,
            "map": _b64(quantise(display_map, signed).tobytes()),
            "importance": [float(v) for v in importance],
            "legend": [[list(c), text] for c, text in figures.legend_entries(chosen, target or "the target",
                                                                               polarity)],
            "scores": {str(k): _plain(v) for k, v in (scores or {}).items()}}


def page_data(frames: np.ndarray, views: Sequence[Mapping[str, Any]], *, clip: str,
              label: str = "", prediction: str = "", probability: Optional[float] = None,
              model: str = "", attention: Optional[Sequence[float]] = None) -> Dict[str, Any]:
    """Everything the page draws, as JSON-ready values. ``frames``: ``(T, H, W, 3)`` uint8 or
    float in [0, 1], at the maps' resolution."""
    frames = figures.to_uint8(np.asarray(frames))
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
    count, height, width = frames.shape[:3]
    size = count * height * width
    for view in views:
        if len(base64.b64decode(view["map"])) != size:
            raise ValueError(f"map of {view['label']!r} does not match frames {frames.shape[:3]}")
    return {"clip": clip, "label": label, "prediction": prediction,
            "probability": None if probability is None or probability != probability
            else float(probability),
            "model": model, "frames": ["data:image/jpeg;base64," + _b64(jpeg_bytes(f, JPEG_QUALITY))
                                       for f in frames],
            "width": width, "height": height, "count": count,
            "attention": [float(v) for v in attention] if attention is not None else [],
            "luts": {name: _b64(t.tobytes()) for name, t in colour_tables().items()},
            "views": list(views)}


def script_json(data: Any) -> str:
    """JSON safe inside ``<script>``: no ``<``, ``>``, ``&`` or line separators left raw."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


_STYLE = """
body{font:13px/1.35 system-ui,sans-serif;margin:10px;color:#222;background:#fff}
h1{font-size:16px;margin:0 0 4px}
.meta{color:#444;margin:0 0 6px}
.bar{display:flex;flex-wrap:wrap;gap:10px;align-items:center;padding:6px 0;border-bottom:1px solid #ccc}
.views{display:flex;flex-wrap:wrap;gap:4px 12px;margin:6px 0}
.panels{display:flex;flex-wrap:wrap;gap:14px;margin-top:8px}
.panel{border:1px solid #ddd;padding:6px;max-width:360px}
.panel h2{font-size:13px;margin:0 0 4px;word-break:break-word}
.panel canvas.frame{width:336px;image-rendering:pixelated;display:block}
.panel canvas.chart{display:block;cursor:pointer;margin-top:4px}
.legend{font-size:11px;color:#444;margin:4px 0}
.legend span.swatch{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
canvas.cbar{display:block;margin-top:2px}
.ticks{display:flex;justify-content:space-between;width:336px;font-size:10px;color:#666}
dl{display:grid;grid-template-columns:auto auto;gap:0 8px;font-size:11px;margin:4px 0}
dt{color:#555}dd{margin:0;word-break:break-word}
.note{color:#666;font-size:11px}
"""

_SCRIPT = r"""
(function () {
  var root = document.getElementById('explorer');
  var data = JSON.parse(document.getElementById('explorer-data').textContent);
  var W = data.width, H = data.height, T = data.count, N = W * H;
  function bytes(b64) {
    var s = atob(b64), out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) { out[i] = s.charCodeAt(i); }
    return out;
  }
  var luts = {};
  Object.keys(data.luts).forEach(function (k) { luts[k] = bytes(data.luts[k]); });
  var maps = data.views.map(function (v) { return bytes(v.map); });
  var el = function (id) { return root.querySelector('#' + id); };
  var slider = el('frame'), play = el('play'), speed = el('speed'), opacity = el('opacity');
  var cmap = el('cmap'), frameText = el('frame-text');
  var state = {t: 0, timer: null, shown: [0]};
  var pixels = [];              // decoded frames, RGBA per pixel
  var scratch = document.createElement('canvas'); scratch.width = W; scratch.height = H;
  var sctx = scratch.getContext('2d', {willReadFrequently: true});

  function magnitude(q, signed) {
    // the map value of a table row, back from the quantised byte (row centre)
    var v = (q + 0.5) / 256;
    return signed ? Math.abs(2 * v - 1) : v;
  }
  function mapName(view) { return cmap.value === 'auto' ? view.style : cmap.value; }

  function drawPanel(panel) {
    var i = Number(panel.dataset.view), view = data.views[i], q = maps[i];
    var ctx = panel.querySelector('canvas.frame').getContext('2d', {willReadFrequently: true});
    var image = ctx.createImageData(W, H), out = image.data, frame = pixels[state.t];
    var lut = luts[mapName(view)], a = Number(opacity.value) / 100, offset = state.t * N;
    for (var p = 0; p < N; p++) {
      var row = q[offset + p], alpha = a * Math.pow(magnitude(row, view.signed), 0.8);
      for (var c = 0; c < 3; c++) {
        var f = frame[4 * p + c];
        out[4 * p + c] = Math.round(f + alpha * (lut[3 * row + c] - f));
      }
      out[4 * p + 3] = 255;
    }
    ctx.putImageData(image, 0, 0);
    drawChart(panel, view);
  }
  function drawChart(panel, view) {
    var chart = panel.querySelector('canvas.chart'), ctx = chart.getContext('2d');
    var w = chart.width, h = chart.height, slot = w / T;
    ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, w, h);
    ctx.fillStyle = '#e6e6e6'; ctx.fillRect(state.t * slot, 0, slot, h);   // the cursor
    var series = [[view.importance, '#ff7f0e']];
    if (data.attention.length === T) { series.push([data.attention, '#1f77b4']); }
    series.forEach(function (s, k) {
      var values = s[0], top = Math.max.apply(null, values.concat([1e-12]));
      var bw = slot * 0.8 / series.length;
      ctx.fillStyle = s[1];
      values.forEach(function (v, t) {
        var bh = (h - 2) * Math.max(v, 0) / top;
        ctx.fillRect(t * slot + 0.1 * slot + k * bw, h - 1 - bh, bw, bh);
      });
    });
    ctx.strokeStyle = '#111'; ctx.lineWidth = 2;
    ctx.strokeRect(state.t * slot + 1, 1, slot - 2, h - 2);
    panel.querySelector('canvas.chart').dataset.cursor = state.t;
  }
  function drawBar(panel) {
    var view = data.views[Number(panel.dataset.view)];
    var bar = panel.querySelector('canvas.cbar'), ctx = bar.getContext('2d');
    var lut = luts[mapName(view)], a = Number(opacity.value) / 100;
    for (var x = 0; x < bar.width; x++) {
      var row = Math.min(255, Math.floor(x / bar.width * 256));
      var alpha = a * Math.pow(magnitude(row, view.signed), 0.8);
      ctx.fillStyle = 'rgb(' + [0, 1, 2].map(function (c) {
        return Math.round(128 + alpha * (lut[3 * row + c] - 128));
      }).join(',') + ')';
      ctx.fillRect(x, 0, 1, bar.height);
    }
  }
  function legends() {
    // the legend's words name the method's own colours; another map only keeps low -> high
    root.querySelectorAll('.panel').forEach(function (panel) {
      panel.querySelector('.legend').hidden = cmap.value !== 'auto';
      panel.querySelector('.legend-other').hidden = cmap.value === 'auto';
    });
  }
  function render() {
    legends();
    slider.value = state.t;
    frameText.textContent = 'frame ' + (state.t + 1) + ' / ' + T;
    root.dataset.frame = state.t;
    root.querySelectorAll('.panel').forEach(function (p) { drawPanel(p); drawBar(p); });
  }
  function seek(t) { state.t = Math.max(0, Math.min(T - 1, t)); render(); }
  function text(tag, content, cls) {
    var node = document.createElement(tag);
    node.textContent = content;
    if (cls) { node.className = cls; }
    return node;
  }
  function buildPanels() {
    var holder = el('panels');
    holder.textContent = '';
    state.shown.forEach(function (i) {
      var view = data.views[i], panel = document.createElement('div');
      panel.className = 'panel'; panel.dataset.view = i;
      panel.appendChild(text('h2', view.label));
      var canvas = document.createElement('canvas');
      canvas.className = 'frame'; canvas.width = W; canvas.height = H;
      panel.appendChild(canvas);
      var chart = document.createElement('canvas');
      chart.className = 'chart'; chart.width = 336; chart.height = 48;
      chart.title = 'map share per frame (orange)' +
        (data.attention.length === T ? ', model attention (blue)' : '') + '; click to seek';
      chart.addEventListener('click', function (event) {
        var box = chart.getBoundingClientRect();
        seek(Math.floor((event.clientX - box.left) / box.width * T));
      });
      panel.appendChild(chart);
      panel.appendChild(text('div', chart.title, 'note'));
      var legend = document.createElement('div'); legend.className = 'legend';
      view.legend.forEach(function (entry) {
        var item = document.createElement('div'), swatch = text('span', '', 'swatch');
        swatch.style.background = 'rgb(' + entry[0].join(',') + ')';
        item.appendChild(swatch); item.appendChild(document.createTextNode(entry[1]));
        legend.appendChild(item);
      });
      panel.appendChild(legend);
      panel.appendChild(text('div', view.signed ? 'colour map: against (left) to for (right)'
                                                : 'colour map: weak (left) to strong (right)',
                             'legend legend-other'));
      var bar = document.createElement('canvas');
      bar.className = 'cbar'; bar.width = 336; bar.height = 10;
      panel.appendChild(bar);
      var ticks = document.createElement('div'); ticks.className = 'ticks';
      (view.signed ? ['-1', '0', '1'] : ['0', '0.5', '1']).forEach(function (s) {
        ticks.appendChild(text('span', s));
      });
      panel.appendChild(ticks);
      var keys = Object.keys(view.scores);
      if (keys.length) {
        var dl = document.createElement('dl');
        keys.forEach(function (k) {
          var v = view.scores[k];
          if (typeof v === 'number') { v = Number(v.toPrecision(4)); }
          dl.appendChild(text('dt', k)); dl.appendChild(text('dd', String(v)));
        });
        panel.appendChild(dl);
      }
      holder.appendChild(panel);
    });
    render();
  }
  var choices = el('views');
  data.views.forEach(function (view, i) {
    var label = document.createElement('label'), box = document.createElement('input');
    box.type = 'checkbox'; box.id = 'view-' + i; box.checked = i === 0;
    box.addEventListener('change', function () {
      state.shown = [];
      data.views.forEach(function (v, j) { if (el('view-' + j).checked) { state.shown.push(j); } });
      buildPanels();
    });
    label.appendChild(box); label.appendChild(document.createTextNode(' ' + view.label));
    choices.appendChild(label);
  });
  Object.keys(luts).forEach(function (k) {
    var option = document.createElement('option'); option.value = k; option.textContent = k;
    cmap.appendChild(option);
  });
  function stop() { clearInterval(state.timer); state.timer = null; play.textContent = 'play'; }
  function start() {
    stop();
    play.textContent = 'pause';
    state.timer = setInterval(function () { seek((state.t + 1) % T); }, 1000 / Number(speed.value));
  }
  play.addEventListener('click', function () { if (state.timer) { stop(); } else { start(); } });
  speed.addEventListener('change', function () { if (state.timer) { start(); } });
  slider.max = T - 1;
  slider.addEventListener('input', function () { seek(Number(slider.value)); });
  opacity.addEventListener('input', render);
  cmap.addEventListener('change', render);
  root.tabIndex = 0;
  document.addEventListener('keydown', function (event) {
    if (event.target && event.target.tagName === 'SELECT') { return; }
    if (event.key === 'ArrowRight') { stop(); seek(state.t + 1); event.preventDefault(); }
    if (event.key === 'ArrowLeft') { stop(); seek(state.t - 1); event.preventDefault(); }
    if (event.key === ' ') { play.click(); event.preventDefault(); }
  });
  var pending = data.frames.length;
  data.frames.forEach(function (src, t) {
    var image = new Image();
    image.onload = function () {
      sctx.drawImage(image, 0, 0, W, H);
      pixels[t] = sctx.getImageData(0, 0, W, H).data;
      pending -= 1;
      if (!pending) { buildPanels(); root.dataset.ready = '1'; }
    };
    image.onerror = function () { root.dataset.error = 'frame ' + t + ' did not decode'; };
    image.src = src;
  });
})();
"""


def viewer_html(data: Mapping[str, Any]) -> str:
    """The whole page for :func:`page_data`'s ``data``."""
    probability = data.get("probability")
    meta = " \u00b7 ".join(p for p in (
        f"label: {data.get('label') or 'unknown'}",
        data.get("prediction") and (f"predicted: {data['prediction']}"
                                    + (f" ({probability:.3f})" if probability is not None else "")),
        data.get("model") and f"model: {data['model']}",
        f"{data['count']} frames, {data['width']}x{data['height']} px") if p)
    title = html.escape(str(data.get("clip", "")))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{_STYLE}</style></head>
<body>
<div id="explorer" data-explorer="1">
<h1 id="clip-name">{title}</h1>
<p class="meta">{html.escape(meta)}</p>
<div class="bar">
<button id="play" type="button">play</button>
<input id="frame" type="range" min="0" max="0" value="0" aria-label="frame">
<span id="frame-text"></span>
<label>speed <select id="speed"><option value="2">2 fps</option><option value="4">4 fps</option>
<option value="8" selected>8 fps</option><option value="16">16 fps</option></select></label>
<label>opacity <input id="opacity" type="range" min="0" max="100" value="100"></label>
<label>colours <select id="cmap"><option value="auto" selected>method's own</option></select></label>
</div>
<div class="views" id="views" aria-label="maps shown"></div>
<p class="note">Tick several maps to see them side by side on one time cursor; left/right keys
step through frames, space plays. Opacity 100 is the overlay the PNG and GIF files show.</p>
<div class="panels" id="panels"></div>
</div>
<script type="application/json" id="explorer-data">{script_json(data)}</script>
<script>{_SCRIPT}</script>
</body></html>
"""


def write_page(path: Path, page: str) -> Path:
    """Write a page (:func:`viewer_html`) atomically and return its path."""
    write_text(Path(path), page)
    return Path(path)


@dataclass(frozen=True)
class Viewer:
    """A page shown inline by Jupyter (an iframe with the page as ``srcdoc``; no server)."""

    page: str
    height: int = 720

    def _repr_html_(self) -> str:
        return (f'<iframe class="videovisual-explorer" sandbox="allow-scripts" '
                f'style="width:100%;height:{self.height}px;border:1px solid #ddd" '
                f'srcdoc="{html.escape(self.page, quote=True)}"></iframe>')

    def save(self, path: Path) -> Path:
        write_text(Path(path), self.page)
        return Path(path)


def show(attribution, frames: np.ndarray, index: int = 0, polarity: str = "positive",
         clip: str = "clip", target: str = "") -> Viewer:
    """The viewer for clip ``index`` of an :class:`vis_methods.Attribution`, every output set
    as one map; ``frames``: that clip's ``(T, H, W, 3)`` pictures (uint8, or float in [0, 1])
    at the map's resolution."""
    maps = attribution.maps[index].detach().float().cpu().numpy()
    names = tuple(attribution.names)
    sets = [(names[0], maps)] if len(names) == 1 else [(n, maps[s:s + 1]) for s, n in enumerate(names)]
    diagnostics = attribution.diagnostics[index] if attribution.diagnostics else {}
    views = []
    for set_index, (name, raw) in enumerate(sets):
        shown = figures.apply_polarity(figures.reduce_channels(raw), polarity)
        scores = {k: (v[set_index] if isinstance(v, (list, tuple)) and len(v) == len(sets) > 1 else v)
                  for k, v in diagnostics.items()}
        views.append(view_entry(figures.normalize_map(shown), method=attribution.method,
                                target=target, set_name=name, polarity=polarity,
                                signed_method=attribution.signed,
                                importance=figures.frame_importance(shown), scores=scores))
    return Viewer(viewer_html(page_data(frames, views, clip=clip)))


def find_pages(folder: Path, clip: str) -> List[Path]:
    """The clip's pages under ``folder`` (a method's output folder or a run's ``--out_dir``)."""
    folder = Path(folder)
    name = page_name(clip)
    direct = folder / name
    return [direct] if direct.is_file() else sorted(
        p for p in folder.rglob(f"*{PAGE_SUFFIX}") if p.name == name)


def show_folder(folder: Path, clip: str) -> Viewer:
    """The viewer a run wrote for ``clip`` (its clip id) under ``folder``, read back."""
    pages = find_pages(folder, clip)
    if not pages:
        raise FileNotFoundError(f"no {page_name(clip)} under {folder}")
    return Viewer(pages[0].read_text(encoding="utf-8"))
