"""Encoders for the pictures of :mod:`utils.visualize`: PNG (frame grid), GIF and MP4
(animations). Every file is written whole or not at all (:func:`utils.output.atomic_path`).

:func:`write_visuals` is the one call per map: it colours the map once and writes the
requested formats.
"""
from __future__ import annotations

import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

try:                                  # ISA-L's deflate: ~3x zlib's speed at level 1 (PNG only)
    from isal import isal_zlib
except ImportError:                   # pragma: no cover - isal is in requirements.txt
    isal_zlib = None

from . import visualize
from .output import atomic_path

RENDER_FORMATS = ("png", "gif", "mp4")
FRAME_MS = 120                 # animation speed (GIF delays are whole centiseconds)
ANIMATION_MIN_SIDE = 112       # animation tiles at the model input's size for 112-px models

Picture = Union[np.ndarray, Image.Image]
Box = visualize.Box


def _as_image(picture: Picture) -> Image.Image:
    return picture if isinstance(picture, Image.Image) else Image.fromarray(np.asarray(picture))


def png_bytes(image: Picture, compress_level: int = 1, use_isal: bool = True) -> bytes:
    """An 8-bit RGB PNG of ``image``. Every row uses the PNG 'up' filter (difference to the
    row above, which suits frames and flat chart areas), deflated by ISA-L at
    ``min(compress_level, 3)`` when ``isal`` is installed (``use_isal``), else by zlib at
    ``compress_level`` with run-length matching. On the grids of 112- and 224-px clips ISA-L at
    level 1 is ~3.5x faster than zlib here, for files 2-3% larger; zlib with RLE is itself
    about 3x faster than Pillow's encoder, which tries five filters per row even at level 0."""
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"a PNG needs an RGB uint8 picture (H, W, 3), got {array.dtype} {array.shape}")
    height, width = array.shape[:2]
    rows = array.reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), dtype=np.uint8)
    filtered[:, 0] = 2                                             # filter type 'up'
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])         # modulo 256, as PNG defines

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    if use_isal and isal_zlib is not None:
        data = isal_zlib.compress(filtered.tobytes(), min(compress_level, 3))
    else:
        # run-length matching only: ~25% faster than zlib's default search on filtered
        # frames, for the same size
        compressor = zlib.compressobj(compress_level, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
        data = compressor.compress(filtered.tobytes()) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
            + chunk(b"IEND", b""))


def save_png(image: Picture, path: Path, compress_level: int = 1) -> None:
    """Write an RGB picture as PNG (:func:`png_bytes`)."""
    data = png_bytes(image, compress_level)
    with atomic_path(Path(path)) as temp:
        temp.write_bytes(data)


def paletted_frames(pictures: Sequence[Picture], sample_step: int = 3,
                    changing: Optional[Sequence[Box]] = None):
    """All pictures on one 256-colour palette: ``(indices (N, H, W) uint8, palette list)``.

    The palette comes from fast octree quantisation of every ``sample_step``-th pixel; Pillow
    then maps every pixel to its nearest palette entry without dithering, in one call for the
    whole stack. With one palette, unchanged regions (captions, colour bar, charts) stay
    identical from frame to frame, so the GIF stores only what changes, at about half the time
    of a palette per frame. ``changing``: boxes ``(x0, y0, x1, y1)`` outside which every
    picture equals the first (:meth:`visualize.AnimationLayout.changing_boxes`); then only
    the first picture and those boxes of the others are mapped (the rest is the first
    picture's indices), a third of the pixels for the pipeline's animations, with a sample
    that weighs the colours as the whole stack would.
    """
    if isinstance(pictures, np.ndarray):
        stack = pictures
    else:
        stack = np.stack([np.asarray(p.convert("RGB") if isinstance(p, Image.Image) else p, dtype=np.uint8)
                          for p in pictures])
    if stack.ndim != 4 or stack.shape[-1] != 3:
        raise ValueError(f"animation frames must be RGB (N, H, W, 3), got {stack.shape}")
    stack = np.ascontiguousarray(stack, dtype=np.uint8)
    count, height, width = stack.shape[:3]
    boxes = [(max(0, x0), max(0, y0), min(width, x1), min(height, y1))
             for x0, y0, x1, y1 in (changing or ())]
    boxes = [b for b in boxes if b[0] < b[2] and b[1] < b[3]]
    step = sample_step
    if changing is None or count == 1:
        parts = [stack.reshape(count * height, width, 3)]
        sample = parts[0][::step, ::step].reshape(-1, 3)
    else:
        parts = [stack[0]] + [stack[1:, y0:y1, x0:x1].reshape(-1, x1 - x0, 3)
                              for x0, y0, x1, y1 in boxes]
        # the sample weighs every colour as the whole stack would: the unchanging pixels once
        # per frame (else smooth static parts, like the colour bar, get too few entries)
        still = np.ones((height, width), dtype=bool)
        for x0, y0, x1, y1 in boxes:
            still[y0:y1, x0:x1] = False
        sample = np.concatenate(
            [np.tile(stack[0][::step, ::step][still[::step, ::step]], (count, 1))]
            + [stack[:, y0:y1, x0:x1][:, ::step, ::step].reshape(-1, 3) for x0, y0, x1, y1 in boxes])
    row = min(256, len(sample))                    # rows of 256 (up to 255 pixels left out)
    sample = sample[:len(sample) // row * row]
    palette = Image.fromarray(sample.reshape(-1, row, 3)).quantize(
        256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    mapped = [np.asarray(Image.fromarray(np.ascontiguousarray(p)).quantize(
        palette=palette, dither=Image.Dither.NONE)) for p in parts]
    if len(parts) == 1:
        indices = mapped[0].reshape(count, height, width)
    else:
        indices = np.empty((count, height, width), dtype=np.uint8)
        indices[:] = mapped[0]
        for (x0, y0, x1, y1), region in zip(boxes, mapped[1:]):
            indices[1:, y0:y1, x0:x1] = region.reshape(count - 1, y1 - y0, x1 - x0)
    return indices, palette.getpalette()


def save_gif(pictures: Sequence[Picture], path: Path, frame_ms: int = FRAME_MS,
             changing: Optional[Sequence[Box]] = None) -> None:
    """Animated GIF, looping, all frames on one palette (:func:`paletted_frames`, with its
    ``changing`` boxes), no dithering: no visible loss on smooth heat-map overlays."""
    if len(pictures) == 0:
        raise ValueError("an animation needs at least one frame")
    indices, palette = paletted_frames(pictures, changing=changing)
    frames = []
    for frame in indices:
        image = Image.fromarray(frame)             # mode L; the palette makes it P
        image.putpalette(palette)
        frames.append(image)
    with atomic_path(Path(path)) as temp:
        frames[0].save(temp, format="GIF", save_all=True, append_images=frames[1:],
                       duration=frame_ms, loop=0, optimize=False)


def save_mp4(pictures: Sequence[Picture], path: Path, fps: float = 1000.0 / FRAME_MS,
             crf: int = 20, preset: str = "veryfast") -> None:
    """H.264 MP4 (yuv420p, 'faststart' so browsers play it while loading) with PyAV, one video
    frame per picture. Pictures must all have the same even width and height."""
    import av                                      # only the MP4 path needs PyAV
    from fractions import Fraction

    if len(pictures) == 0:
        raise ValueError("an animation needs at least one frame")
    arrays = [np.ascontiguousarray(np.asarray(p.convert("RGB") if isinstance(p, Image.Image) else p,
                                              dtype=np.uint8)) for p in pictures]
    height, width = arrays[0].shape[:2]
    if height % 2 or width % 2:
        raise ValueError(f"MP4 frames need even sides, got {width}x{height}")
    if any(a.shape != arrays[0].shape or a.ndim != 3 or a.shape[2] != 3 for a in arrays):
        raise ValueError("MP4 frames must all be RGB of the same size")
    rate = Fraction(fps).limit_denominator(1000)
    with atomic_path(Path(path)) as temp:
        with av.open(str(temp), mode="w", format="mp4",
                     options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": str(crf), "preset": preset}
            for array in arrays:
                frame = av.VideoFrame.from_ndarray(array, format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


def write_visuals(folder: Path, stem: str, formats: Sequence[str], frames: np.ndarray,
                  display_map: np.ndarray, style: str, caption: visualize.Caption,
                  importance: Optional[np.ndarray] = None, attention: Optional[np.ndarray] = None,
                  time_steps: Optional[int] = None,
                  animation_min_side: int = ANIMATION_MIN_SIDE, parallel: bool = True,
                  fonts: Optional[visualize.Typesetter] = None) -> List[str]:
    """Draw one map in the requested ``formats`` (any of ``png``, ``gif``, ``mp4``; others are
    ignored) as ``folder/<stem>.<format>``; returns the file names written, in that order.

    ``frames``: ``(T, H, W, 3)`` float in [0, 1] or uint8; ``display_map``: the normalised map
    ``(T, H, W)`` (:func:`visualize.normalize_map`); ``style``: :func:`visualize.overlay_style`;
    ``importance``: per-frame shares (:func:`visualize.frame_importance`); ``attention``: the
    model's attention per frame; ``time_steps``: the time steps of the grid the map was
    computed on (:func:`visualize.map_time_steps`), for the note on interpolated bars;
    ``animation_min_side``: animation tiles are upscaled (nearest, integer factor) to at least
    this many pixels (224 doubles 112-px clips, at ~2x the GIF time); ``parallel``: draw the
    PNG grid in a second thread while the animation is made; ``fonts``: a
    :class:`visualize.Typesetter` to share the drawn texts with other calls (one per run).
    """
    wanted = [f for f in RENDER_FORMATS if f in formats]
    if not wanted:
        return []
    frames = visualize.to_uint8(np.asarray(frames))
    overlays = visualize.overlay_uint8(frames, display_map, style)
    fonts = fonts or visualize.Typesetter()
    legend = visualize.legend_entries(style, caption.target, caption.polarity)
    note = visualize.time_note(time_steps, frames.shape[0])
    folder = Path(folder)

    def grid() -> None:
        image = visualize.render_grid_image(frames, overlays, caption.title_lines(), importance,
                                            attention, style, legend, note, fonts=fonts)
        save_png(image, folder / f"{stem}.png")

    def animations() -> None:
        pictures, layout = visualize.animation(frames, overlays, caption.header_lines(),
                                               importance, attention, style, legend, note,
                                               animation_min_side, fonts)
        if "gif" in wanted:
            save_gif(pictures, folder / f"{stem}.gif", changing=layout.changing_boxes())
        if "mp4" in wanted:
            save_mp4(pictures, folder / f"{stem}.mp4")

    animated = "gif" in wanted or "mp4" in wanted
    if "png" in wanted and animated and parallel:
        # zlib, Pillow's quantiser and encoders and numpy release the GIL: the grid is drawn
        # and compressed while the animation is made. The pool's exit waits for the grid even
        # when the animation fails, so no write outlives this call.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(grid)
            animations()
            pending.result()
    else:
        if "png" in wanted:
            grid()
        if animated:
            animations()
    return [f"{stem}.{f}" for f in wanted]


# ----------------------------------------------------------------------- methods side by side
COMPARE_COLUMNS = 8


def comparison_images(frames: np.ndarray, entries: Sequence[Tuple[str, np.ndarray, str]],
                      title_lines: Sequence[str], min_tile: int = 112,
                      fonts: Optional[visualize.Typesetter] = None):
    """One figure and one animation with a row per method, as papers show methods side by side.

    ``frames``: ``(T, H, W, 3)``; ``entries``: ``(method, display map (T, H, W), style)``.
    Returns ``(grid (h, w, 3) uint8, animation frames (T, h, w, 3) uint8)``: the grid has the frames
    (8 evenly spaced) in its first row and one row of overlays per method, each labelled; each
    animation frame shows the frame and every method's overlay at that time, left to right."""
    frames8 = visualize.to_uint8(np.asarray(frames))
    num_frames, height, width = frames8.shape[:3]
    scale = max(1, -(-min_tile // min(height, width)))
    tile_h, tile_w = height * scale, width * scale
    overlays = [visualize.overlay_uint8(frames8, display, style) for _, display, style in entries]
    names = ["clip"] + [name for name, _, _ in entries]
    font = visualize._font(12, fonts)
    label_w = 8 + int(max(visualize._text_width(font, n) for n in names))
    columns = np.unique(np.linspace(0, num_frames - 1, min(COMPARE_COLUMNS, num_frames))
                        .round().astype(int))
    title_h = 18 * len(title_lines) + 20
    canvas = np.full((title_h + len(names) * (tile_h + 4), label_w + len(columns) * (tile_w + 2),
                      3), 255, dtype=np.uint8)
    rows = [frames8] + overlays
    for r, images in enumerate(rows):
        y = title_h + r * (tile_h + 4)
        for c, t in enumerate(columns):
            x = label_w + c * (tile_w + 2)
            canvas[y:y + tile_h, x:x + tile_w] = visualize._upscale(images[t:t + 1], scale)[0]
    grid = canvas                              # texts are stamped onto the array in place
    for i, line in enumerate(title_lines):
        font.draw(grid, (4, 3 + 18 * i), visualize._fit(font, line, grid.shape[1] - 8), (0, 0, 0))
    for r, name in enumerate(names):
        font.draw(grid, (4, title_h + r * (tile_h + 4) + tile_h // 2 - 6), name, (0, 0, 0))
    for c, t in enumerate(columns):
        font.draw(grid, (label_w + c * (tile_w + 2) + 2, title_h - 14), f"t={t}", (0, 0, 0))
    header_h = 18
    strip_w = len(rows) * (tile_w + 2)
    strip_w += strip_w % 2
    animation = np.full((num_frames, header_h + tile_h + (tile_h % 2), strip_w, 3), 255,
                        dtype=np.uint8)
    for r, images in enumerate(rows):
        x = r * (tile_w + 2)
        animation[:, header_h:header_h + tile_h, x:x + tile_w] = visualize._upscale(images, scale)
    header = np.full((header_h, strip_w, 3), 255, dtype=np.uint8)
    for r, name in enumerate(names):
        font.draw(header, (r * (tile_w + 2) + 2, 2), visualize._fit(font, name, tile_w - 4),
                  (0, 0, 0))
    animation[:, :header_h] = header
    return grid, animation


def write_comparison(folder: Path, stem: str, formats: Sequence[str], frames: np.ndarray,
                     entries: Sequence[Tuple[str, np.ndarray, str]],
                     title_lines: Sequence[str],
                     fonts: Optional[visualize.Typesetter] = None) -> List[str]:
    """The comparison figure (PNG) and animation (GIF and/or MP4) of one clip and target."""
    wanted = [f for f in RENDER_FORMATS if f in formats]
    if not wanted or not entries:
        return []
    grid, animation = comparison_images(frames, entries, title_lines, fonts=fonts)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if "png" in wanted:
        save_png(grid, folder / f"{stem}.png")
    if "gif" in wanted:
        save_gif(animation, folder / f"{stem}.gif")
    if "mp4" in wanted:
        save_mp4(animation, folder / f"{stem}.mp4")
    return [f"{stem}.{f}" for f in wanted]
