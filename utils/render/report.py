"""An HTML page over a run's ``summary.csv``: one row per clip and target with its animation,
label, prediction, status, time, per-frame chart and the method's diagnostics; sortable,
filterable, self-contained (inline CSS and JavaScript, no network), with files referenced
relatively so the page opens from the file system.

:func:`write_report` only formats the summary (it opens no picture), so it is cheap enough to
call after every clip.
"""
from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path, PurePosixPath
from typing import Dict, List, Mapping, Optional, Sequence
from urllib.parse import quote

import pandas as pd

from utils.io.atomic import write_text
from utils.io.paths import file_stem
from utils.render.explorer import page_name
from utils.render.formats import suffixes

REPORT_NAME = "index.html"
PAGE_ROWS = 100                 # rows per page at first (the page offers 25, 100 and 500)
# Summary columns shown in their own places; any other column is a method diagnostic.
_KNOWN = ("clip", "label", "prediction", "probability", "target", "method", "model", "seconds",
          "status", "error", "frame_importance", "outputs", "attention", "settings", "folder",
          "map_problem", *(f"{game}{part}" for game in ("deletion", "insertion")
                           for part in ("_auc", "_random_auc", "_curve", "_random_curve")))
_ANIMATIONS = suffixes("animation")[::-1]     # the video first where a clip has both
_PICTURES = suffixes("picture")


def _text(value) -> str:
    """A summary cell as text: '' for missing values (None, NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _number(value) -> Optional[float]:
    try:
        number = float(_text(value))
    except ValueError:
        return None
    return None if math.isnan(number) else number


def _values(cell) -> List[float]:
    """'0.1;0.2;...' -> floats (missing entries as 0)."""
    return [_number(v) or 0.0 for v in _text(cell).split(";") if v.strip()]


def _chart(values: Sequence[float], colour: str, name: str) -> str:
    """Inline SVG bars, one per frame, scaled to the largest value; a tooltip per bar."""
    if not values:
        return ""
    top = max(values) or 1.0
    width, height, slot = 168, 34, 168 / len(values)
    bars = []
    for t, value in enumerate(values):
        bar = height * max(value, 0.0) / top
        bars.append(f'<rect x="{t * slot + 0.1 * slot:.1f}" y="{height - bar:.1f}" '
                    f'width="{0.8 * slot:.1f}" height="{bar:.1f}" fill="{colour}">'
                    f'<title>t={t}: {value:.4f}</title></rect>')
    return (f'<figure class="chart"><svg width="{width}" height="{height + 1}" role="img" '
            f'aria-label="{html.escape(name)}">{"".join(bars)}'
            f'<line x1="0" x2="{width}" y1="{height + 0.5}" y2="{height + 0.5}" stroke="#444"/></svg>'
            f'<figcaption>{html.escape(name)}</figcaption></figure>')


def _relative_folder(report_folder: Path, row_folder: str) -> PurePosixPath:
    """The folder of a row's outputs, relative to the report (``folder`` column; else the
    report's own folder)."""
    if not row_folder:
        return PurePosixPath(".")
    path = Path(row_folder)
    if path.is_absolute():
        path = Path(os.path.relpath(path, report_folder))
    return PurePosixPath(path.as_posix())


def _url(base: PurePosixPath, name: str) -> str:
    return quote(str(base / name) if str(base) != "." else name)


def _maps(outputs: str) -> List[Dict[str, str]]:
    """Output files grouped by map (file stem), in the order the maps were written."""
    groups: Dict[str, Dict[str, str]] = {}
    for name in (n for n in outputs.split(";") if n):
        stem, suffix = os.path.splitext(name)
        groups.setdefault(stem, {})[suffix.lower()] = name
    return list(groups.values())


def _format(value) -> str:
    number = _number(value)
    if number is not None and not _text(value).lstrip("-").isdigit():
        return f"{number:.4g}"
    return _text(value)


def _status_cells(row: Mapping) -> List[str]:
    """The status and seconds cells of one method's row."""
    status = _text(row.get("status")) or "?"
    seconds = _number(row.get("seconds"))
    return [f'<td class="status {html.escape(status)}" data-sort="{html.escape(status)}">'
            f'{html.escape(status)}</td>',
            f'<td data-sort="{"" if seconds is None else seconds}">'
            f'{"" if seconds is None else f"{seconds:.2f}"}</td>']


def _media(files: Mapping[str, str], base: PurePosixPath, stem: str) -> str:
    """One map's animation (the video where there is one) linking to its frame grid, else the
    frame grid alone."""
    animation = next((files[s] for s in _ANIMATIONS if s in files), None)
    picture = next((files[s] for s in _PICTURES if s in files), None)
    if animation and animation.lower().endswith(".mp4"):
        media = (f'<video src="{_url(base, animation)}" autoplay loop muted playsinline '
                 f'preload="auto"></video>')
    elif animation:
        media = (f'<img src="{_url(base, animation)}" alt="{html.escape(stem)}" '
                 f'loading="lazy" decoding="async">')
    elif picture:
        media = (f'<img class="grid" src="{_url(base, picture)}" alt="{html.escape(stem)}" '
                 f'loading="lazy" decoding="async">')
    else:
        media = ""
    if media and picture:
        media = f'<a href="{_url(base, picture)}" title="frame grid">{media}</a>'
    return media


def _map_figures(row: Mapping, base_folder: Path) -> List[str]:
    """One block per map of the row: its media, timeline link, name and per-frame chart."""
    base = _relative_folder(base_folder, _text(row.get("folder")))
    importance_cells = [c.strip() for c in _text(row.get("frame_importance")).split("|")]
    maps = _maps(_text(row.get("outputs")))
    parts = []
    for index, files in enumerate(maps):
        stem = os.path.splitext(next(iter(files.values())))[0]
        figure = [_media(files, base, stem)]
        if ".csv" in files:            # a long video's timeline, one row per window
            figure.append(f'<div class="stem"><a href="{_url(base, files[".csv"])}">'
                          f'timeline (CSV, one row per window)</a></div>')
        if len(maps) > 1:
            figure.append(f'<div class="stem">{html.escape(stem)}</div>')
        if index < len(importance_cells) and importance_cells[index]:
            figure.append(_chart(_values(importance_cells[index]), "#ff7f0e", "map share per frame"))
        parts.append(f'<div class="one-map">{"".join(figure)}</div>')
    return parts


def _findings(row: Mapping, extra: Sequence[str]) -> List[str]:
    """What the row says about its map: its problem, the scores against a random map, the
    attention chart and the method's diagnostics (``extra`` columns)."""
    parts = []
    problem = _text(row.get("map_problem"))
    if problem:
        parts.append(f'<p class="error">{html.escape(problem)}</p>')
    for game, lower in (("deletion", True), ("insertion", False)):
        auc, chance = _number(row.get(f"{game}_auc")), _number(row.get(f"{game}_random_auc"))
        if auc is None or chance is None:
            continue
        beats = auc < chance if lower else auc > chance
        parts.append(f'<p class="score">{game} AUC {auc:.3f}, random map {chance:.3f} '
                     f'({"lower" if lower else "higher"} is better): '
                     f'{"beats" if beats else "does not beat"} the random map</p>')
    attention = _values(row.get("attention"))
    if attention:
        parts.append(_chart(attention, "#1f77b4", "model attention per frame"))
    diagnostics = [(key, _format(row.get(key))) for key in extra if _text(row.get(key))]
    if diagnostics:
        items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in diagnostics)
        parts.append(f'<dl class="diagnostics">{items}</dl>')
    return parts


def _method_cells(row: Optional[Mapping], base_folder: Path, extra: Sequence[str]) -> List[str]:
    """Status, seconds and the explanation cell of one method for one clip and target."""
    if row is None:
        return ['<td data-sort="">-</td>', '<td data-sort="">-</td>', '<td class="map">not run</td>']
    parts = []
    error = _text(row.get("error"))
    if error:
        parts.append(f'<p class="error">{html.escape(error)}</p>')
    parts += _map_figures(row, base_folder) + _findings(row, extra)
    return _status_cells(row) + [f'<td class="map">{"".join(parts)}</td>']


# Pictures and animations are the run's own files; nothing else loads, nothing is sent.
CSP = ("default-src 'none'; img-src 'self' file: data: blob:; media-src 'self' file: blob:; "
       "style-src 'unsafe-inline'; script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'")

_STYLE = """
body{font:13px/1.35 system-ui,sans-serif;margin:12px;color:#222}
h1{font-size:17px;margin:0 0 6px}
.controls{position:sticky;top:0;background:#fff;padding:6px 0;z-index:1;border-bottom:1px solid #ccc}
.controls label{margin-left:12px}
table{border-collapse:collapse;margin-top:8px}
th,td{border:1px solid #ddd;padding:4px 6px;vertical-align:top;text-align:left}
th{background:#f3f3f3;white-space:nowrap}
th.sortable{cursor:pointer}
th[aria-sort=ascending]::after{content:" \\25B2"}
th[aria-sort=descending]::after{content:" \\25BC"}
td.status.ok{color:#176d17}
td.status.error{color:#b00020;font-weight:bold}
tr.mispredicted td.prediction{color:#b05a00;font-weight:bold}
.error{color:#b00020;max-width:420px;white-space:pre-wrap;margin:0 0 4px}
.one-map{display:inline-block;margin:0 6px 6px 0}
.one-map img,.one-map video{display:block;max-width:560px}
.one-map img.grid{max-width:420px}
.stem{color:#666;font-size:11px}
figure.chart{margin:2px 0}
figure.chart figcaption{font-size:11px;color:#666}
dl.diagnostics{display:grid;grid-template-columns:auto auto;gap:0 8px;margin:2px 0;font-size:11px}
dl.diagnostics dt{color:#555}dl.diagnostics dd{margin:0}
th.method{text-align:center;background:#e8eef7}
#shown{margin-left:16px;color:#555}
"""

_SCRIPT = """
(function () {
  var table = document.getElementById('clips');
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var headers = Array.prototype.slice.call(table.querySelectorAll('th.sortable'));
  var filterBox = document.getElementById('filter');
  var onlyFailures = document.getElementById('only-failures');
  var onlyMispredicted = document.getElementById('only-mispredicted');
  var shown = document.getElementById('shown');

  function cellKey(row, column) {
    var cell = row.cells[column];
    if (!cell) { return ''; }
    return cell.hasAttribute('data-sort') ? cell.getAttribute('data-sort') : cell.textContent.trim();
  }
  function sortBy(key, descending) {
    var header = headers.filter(function (h) { return h.dataset.key === key; })[0];
    if (!header) { return false; }
    var column = Number(header.dataset.column);
    var numeric = header.dataset.type === 'number';
    var ordered = rows.map(function (row, index) { return [row, index]; });
    ordered.sort(function (a, b) {
      var x = cellKey(a[0], column), y = cellKey(b[0], column);
      if (x === '' && y !== '') { return 1; }            // empty values last either way
      if (y === '' && x !== '') { return -1; }
      var order = numeric ? Number(x) - Number(y) : x.localeCompare(y, undefined, {numeric: true});
      if (descending) { order = -order; }
      return order || a[1] - b[1];
    });
    ordered.forEach(function (pair) { body.appendChild(pair[0]); });
    if (matching.length) { applyFilter(); }
    headers.forEach(function (h) { h.removeAttribute('aria-sort'); });
    header.setAttribute('aria-sort', descending ? 'descending' : 'ascending');
    document.body.setAttribute('data-sorted', (descending ? '-' : '') + key);
    return true;
  }
  var scoreKey = document.getElementById('score-key');
  var scoreMin = document.getElementById('score-min');
  var scoreMax = document.getElementById('score-max');
  var pageSize = document.getElementById('page-size');
  var pageText = document.getElementById('page-text');
  var page = 0, matching = [];
  var scores = rows.map(function (row) { return JSON.parse(row.dataset.scores || '{}'); });
  var texts = null;              // the rows' texts, read at the first text filter
  function inRange(index) {
    var low = scoreMin.value === '' ? null : Number(scoreMin.value);
    var high = scoreMax.value === '' ? null : Number(scoreMax.value);
    if (low === null && high === null) { return true; }
    var value = scores[index][scoreKey.value];
    if (value === undefined) { return false; }
    return (low === null || value >= low) && (high === null || value <= high);
  }
  // Only one page of rows is shown, so the pictures of the others (loaded lazily) never load.
  function showPage() {
    var size = Number(pageSize.value), pages = Math.max(1, Math.ceil(matching.length / size));
    page = Math.max(0, Math.min(page, pages - 1));
    var first = page * size, last = first + size;
    var position = new Map();
    matching.forEach(function (row, k) { position.set(row, k); });
    rows.forEach(function (row) {
      var k = position.get(row);
      row.hidden = k === undefined || k < first || k >= last;
    });
    pageText.textContent = ' page ' + (page + 1) + ' of ' + pages + ' ';
    document.body.setAttribute('data-page', page + 1);
  }
  function applyFilter() {
    var text = filterBox.value.trim().toLowerCase();
    if (text && !texts) { texts = rows.map(function (row) { return row.textContent.toLowerCase(); }); }
    var index = new Map();
    rows.forEach(function (row, k) { index.set(row, k); });
    matching = Array.prototype.filter.call(body.rows, function (row) {
      var k = index.get(row);
      return (!text || texts[k].indexOf(text) >= 0) &&
        (!onlyFailures.checked || row.dataset.failed === '1') &&
        (!onlyMispredicted.checked || row.dataset.mispredicted === '1') && inRange(k);
    });
    shown.textContent = matching.length + ' of ' + rows.length + ' rows';
    showPage();
  }
  document.getElementById('page-previous').addEventListener('click', function () { page -= 1; showPage(); });
  document.getElementById('page-next').addEventListener('click', function () { page += 1; showPage(); });
  pageSize.addEventListener('change', function () { page = 0; showPage(); });
  [scoreKey, scoreMin, scoreMax].forEach(function (control) {
    control.addEventListener('input', function () { page = 0; applyFilter(); });
    control.addEventListener('change', function () { page = 0; applyFilter(); });
  });
  function fromHash() {
    var settings = {};
    location.hash.replace(/^#/, '').split('&').forEach(function (part) {
      var pair = part.split('=');
      if (pair[0]) { settings[decodeURIComponent(pair[0])] = decodeURIComponent(pair[1] || ''); }
    });
    if (settings.filter !== undefined) { filterBox.value = settings.filter; }
    if (settings.failures !== undefined) { onlyFailures.checked = settings.failures === '1'; }
    if (settings.mispredicted !== undefined) { onlyMispredicted.checked = settings.mispredicted === '1'; }
    if (settings.score !== undefined) { scoreKey.value = settings.score; }
    if (settings.min !== undefined) { scoreMin.value = settings.min; }
    if (settings.max !== undefined) { scoreMax.value = settings.max; }
    if (settings.page !== undefined) { page = Number(settings.page) - 1 || 0; }
    if (settings.sort) {
      var descending = settings.sort.charAt(0) === '-';
      sortBy(descending ? settings.sort.slice(1) : settings.sort, descending);
    }
    applyFilter();
  }
  headers.forEach(function (header) {
    header.addEventListener('click', function () {
      var descending = header.getAttribute('aria-sort') === 'ascending';
      sortBy(header.dataset.key, descending);
    });
  });
  [filterBox, onlyFailures, onlyMispredicted].forEach(function (control) {
    control.addEventListener('input', function () { page = 0; applyFilter(); });
    control.addEventListener('change', function () { page = 0; applyFilter(); });
  });
  window.addEventListener('hashchange', fromHash);
  fromHash();
  document.body.setAttribute('data-rows', 'ready');
  document.body.setAttribute('data-rows-ms', Math.round(performance.now()));

  // Tell whoever looks (a person or a headless browser) when the first page's pictures loaded.
  var media = Array.prototype.slice.call(document.querySelectorAll('tr:not([hidden]) td img, tr:not([hidden]) td video'));
  var loaded = 0, failed = 0;
  function settle(ok) {
    if (ok) { loaded += 1; } else { failed += 1; }
    document.body.setAttribute('data-media-loaded', loaded);
    document.body.setAttribute('data-media-failed', failed);
    if (loaded + failed === media.length) { document.body.setAttribute('data-media', 'ready'); }
  }
  document.body.setAttribute('data-media-total', media.length);
  if (!media.length) { document.body.setAttribute('data-media', 'ready'); }
  media.forEach(function (element) {
    if (element.tagName === 'IMG') {
      if (element.complete) { settle(element.naturalWidth > 0); return; }
      element.addEventListener('load', function () { settle(true); });
      element.addEventListener('error', function () { settle(false); });
    } else {
      if (element.readyState >= 2) { settle(true); return; }
      element.addEventListener('loadeddata', function () { settle(true); }, {once: true});
      element.addEventListener('error', function () { settle(false); }, {once: true});
    }
  });
})();
"""


_HEADER = ('<th class="sortable" data-key="clip" data-type="text" rowspan="{span}">clip</th>',
           '<th class="sortable" data-key="label" data-type="text" rowspan="{span}">label</th>',
           '<th class="sortable" data-key="prediction" data-type="text" rowspan="{span}">prediction</th>',
           '<th class="sortable" data-key="probability" data-type="number" rowspan="{span}">probability</th>',
           '<th class="sortable" data-key="target" data-type="text" rowspan="{span}">target</th>')


def _shown_methods(records: Sequence[dict], methods: Optional[Sequence[str]]) -> Sequence[str]:
    """The methods shown: ``methods``, each of which must be in the summary, else every method
    of the summary in order of appearance."""
    present = list(dict.fromkeys(_text(r.get("method")) for r in records))
    if methods is None:
        return present
    unknown = [m for m in methods if m not in present]
    if unknown:
        raise ValueError(f"methods not in the summary: {', '.join(unknown)}")
    return methods


def _head_rows(methods: Sequence[str]) -> str:
    """The table's header: the clip's columns, then status, seconds and explanation per method
    (under the method's name when there are several)."""
    several = len(methods) > 1
    first = [h.format(span=2 if several else 1) for h in _HEADER]
    second = []
    column = len(_HEADER)
    for method in methods:
        suffix = f":{method}" if several else ""
        cells = [f'<th class="sortable" data-key="status{html.escape(suffix)}" data-type="text" '
                 f'data-column="{column}">status</th>',
                 f'<th class="sortable" data-key="seconds{html.escape(suffix)}" data-type="number" '
                 f'data-column="{column + 1}">seconds</th>',
                 '<th>explanation</th>']
        column += 3
        if several:
            first.append(f'<th class="method" colspan="3">{html.escape(method)}</th>')
            second.extend(cells)
        else:
            first.extend(cells)
    for index in range(len(_HEADER)):
        first[index] = first[index].replace('data-type=', f'data-column="{index}" data-type=', 1)
    return f"<tr>{''.join(first)}</tr>" + (f"<tr>{''.join(second)}</tr>" if several else "")


def _chosen_rows(clip_rows: Sequence[dict], methods: Sequence[str],
                 target: str) -> Dict[str, Optional[dict]]:
    """Per method, its row of the clip for ``target`` (else its row without a target), or None."""
    chosen: Dict[str, Optional[dict]] = {}
    for method in methods:
        mine = [r for r in clip_rows if _text(r.get("method")) == method]
        match = ([r for r in mine if _text(r.get("target")) == target]
                 or [r for r in mine if not _text(r.get("target"))])
        chosen[method] = match[0] if match else None
    return chosen


def _row_scores(chosen: Mapping[str, Optional[dict]], extra: Sequence[str], several: bool,
                probability: Optional[float], folder: Path, clip: str):
    """``(scores, viewer)``: the row's numbers the score filter offers (``key:method`` when
    several methods are shown), and the link to the clip's explorer (None without outputs)."""
    scores = {} if probability is None else {"probability": probability}
    viewer = None
    for method, row in chosen.items():
        if row is None:
            continue
        for key in ("seconds", *extra):
            number = _number(row.get(key))
            if number is not None and math.isfinite(number):
                scores[f"{key}:{method}" if several else key] = number
        if viewer is None and _text(row.get("status")) == "ok" and _text(row.get("outputs")):
            viewer = _url(_relative_folder(folder, _text(row.get("folder"))),
                          page_name(file_stem(clip)))
    return scores, viewer


def _clip_row(folder: Path, clip: str, target: str, clip_rows: Sequence[dict],
              methods: Sequence[str], extra: Sequence[str], hidden: bool):
    """``(row html, failed, mispredicted, scores)`` of one clip and target."""
    chosen = _chosen_rows(clip_rows, methods, target)
    found = [r for r in chosen.values() if r is not None] or clip_rows
    source = next((r for r in found if _text(r.get("prediction"))), found[0])
    label, prediction = _text(source.get("label")), _text(source.get("prediction"))
    probability = _number(source.get("probability"))
    failed = any(r is not None and _text(r.get("status")) != "ok" for r in chosen.values())
    mispredicted = bool(label and prediction and probability is not None and label != prediction)
    scores, viewer = _row_scores(chosen, extra, len(methods) > 1, probability, folder, clip)
    name = (f'<a class="explore" href="{viewer}" title="open the clip explorer">'
            f'{html.escape(clip)}</a>' if viewer else html.escape(clip))
    cells = [f'<td>{name}</td>', f'<td>{html.escape(label)}</td>',
             f'<td class="prediction">{html.escape(prediction)}</td>',
             f'<td data-sort="{"" if probability is None else probability}">'
             f'{"" if probability is None else f"{probability:.3f}"}</td>',
             f'<td>{html.escape(target)}</td>']
    for method in methods:
        cells.extend(_method_cells(chosen[method], folder, extra))
    classes = " mispredicted" if mispredicted else ""
    row = (f'<tr class="clip-row{classes}"{" hidden" if hidden else ""} '
           f'data-clip="{html.escape(clip)}" '
           f'data-scores="{html.escape(json.dumps(scores))}" '
           f'data-failed="{int(failed)}" data-mispredicted="{int(mispredicted)}">'
           f'{"".join(cells)}</tr>')
    return row, failed, mispredicted, scores


def _page(title: str, counts: str, score_options: str, head_rows: str, rows_html: str) -> str:
    """The whole page around the table's rows."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="counts">{counts} Click a column title to sort; click an animation for the frame grid,
a clip's name for its explorer (player, per-frame chart, every map side by side).</p>
<div class="controls">
<input id="filter" type="search" placeholder="filter rows by any text" size="36">
<label><input id="only-failures" type="checkbox"> only failures</label>
<label><input id="only-mispredicted" type="checkbox"> only mispredictions</label>
<label>score <select id="score-key">{score_options}</select></label>
<input id="score-min" type="number" step="any" placeholder="min" size="6">
<input id="score-max" type="number" step="any" placeholder="max" size="6">
<span id="shown"></span>
<span class="pager"><button id="page-previous" type="button">&lt;</button>
<span id="page-text"></span><button id="page-next" type="button">&gt;</button>
<label>rows per page <select id="page-size"><option>25</option><option selected>{PAGE_ROWS}</option>
<option>500</option></select></label></span>
</div>
<table id="clips"><thead>{head_rows}</thead>
<tbody>
{rows_html}
</tbody></table>
<script>{_SCRIPT}</script>
</body></html>
"""


def report_html(folder: Path, summary: pd.DataFrame, methods: Optional[Sequence[str]] = None) -> str:
    """The page for ``summary`` as written by :func:`write_report` (see there)."""
    folder = Path(folder)
    if "clip" not in summary.columns:
        raise ValueError("the summary has no 'clip' column")
    records = summary.to_dict("records")
    methods = _shown_methods(records, methods)
    extra = [c for c in summary.columns if c not in _KNOWN]
    by_clip: Dict[str, List[dict]] = {}
    for record in records:
        by_clip.setdefault(_text(record.get("clip")), []).append(record)
    body = []
    mispredicted_clips = set()               # counted as clips, not as rows (one per target)
    failed_clips = set()
    score_keys: Dict[str, None] = {}
    for clip, clip_rows in by_clip.items():
        targets = list(dict.fromkeys(_text(r.get("target")) for r in clip_rows if _text(r.get("target"))))
        for target in targets or [""]:
            # rows past the first page start hidden: the first layout stays one page long
            row, failed, mispredicted, scores = _clip_row(folder, clip, target, clip_rows, methods,
                                                          extra, len(body) >= PAGE_ROWS)
            if failed:
                failed_clips.add(clip)
            if mispredicted:
                mispredicted_clips.add(clip)
            score_keys.update(scores)
            body.append(row)
    models = sorted({_text(r.get("model")) for r in records if _text(r.get("model"))})
    title = f"{', '.join(methods)} / {', '.join(models)}"
    score_options = "".join(f'<option value="{html.escape(k)}">{html.escape(k)}</option>'
                            for k in score_keys)
    counts = (f"{len(by_clip)} clips, {len(body)} rows, {len(failed_clips)} clips with failures,\n"
              f"{len(mispredicted_clips)} clips mispredicted.")
    return _page(title, counts, score_options, _head_rows(methods), "\n".join(body))


def write_report(folder: Path, summary: pd.DataFrame, methods: Optional[Sequence[str]] = None) -> Path:
    """Write ``folder/index.html`` for ``summary`` (the rows of ``summary.csv``) and return its path.

    One row per clip and target: clip, label, prediction, probability, target, then per method
    its status, seconds and an explanation cell (the MP4 or GIF animation linking to the PNG
    grid, the error of a failed clip, an SVG chart of ``frame_importance`` -- values separated
    by ';', maps by ' | ' --, the attention per frame, and every further column as a
    diagnostic). ``methods``: the methods shown side by side and their order (default: every
    value of the ``method`` column, in order of appearance). Output files are looked up in
    the row's ``folder`` column when there is one (absolute, or relative to ``folder``), else
    in ``folder``. Reads no picture; written atomically.
    """
    folder = Path(folder)
    page = report_html(folder, summary, methods)
    path = folder / REPORT_NAME
    write_text(path, page)
    return path
