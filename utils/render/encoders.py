"""The encoders: every picture leaves the program through one of these (PNG, GIF, MP4, NPY,
and matplotlib figures as PNG), each file written whole or not at all
(:func:`utils.io.atomic.atomic_path`)."""
from __future__ import annotations

import contextlib
import io
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Sequence, Union

import numpy as np
from PIL import Image

try:                                  # ISA-L's deflate: ~3x zlib's speed at level 1 (PNG only)
    from isal import isal_zlib
except ImportError:                   # pragma: no cover - isal is in requirements.txt
    isal_zlib = None

from utils.render import figures as visualize
from utils.io.atomic import atomic_path

if TYPE_CHECKING:          # matplotlib's figures load only where one is drawn
    from matplotlib.figure import Figure

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
    ``compress_level`` with run-length matching: one filter for every row, where Pillow's
    encoder tries five (speed figures: ``bench/bench_render.py``)."""
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


def jpeg_bytes(image: Picture, quality: int = 90) -> bytes:
    """A baseline RGB JPEG of ``image`` in memory (the explorer's frames, as data URIs)."""
    buffer = io.BytesIO()
    _as_image(image).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


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
             crf: int = 20, preset: str = "veryfast",
             changing: Optional[Sequence[Box]] = None) -> None:
    """H.264 MP4 (yuv420p, 'faststart' so browsers play it while loading) with PyAV, one video
    frame per picture. Pictures must all have the same even width and height. ``changing``:
    the animation encoders' hint (:func:`save_gif`), unused: H.264 finds the still parts itself."""
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


class Mp4Writer:
    """An H.264 MP4 written picture by picture (for videos too long to hold in memory), whole
    or not at all: ``with Mp4Writer(path, fps) as writer: writer.write(picture)``. Pictures
    must all have the first one's even width and height."""

    def __init__(self, path: Path, fps: float, crf: int = 23, preset: str = "veryfast"):
        self.path, self.fps, self.crf, self.preset = Path(path), fps, crf, preset
        self.count = 0

    def __enter__(self) -> "Mp4Writer":
        import av
        from fractions import Fraction

        self._atomic = atomic_path(self.path)
        temp = self._atomic.__enter__()
        self._container = av.open(str(temp), mode="w", format="mp4",
                                  options={"movflags": "+faststart"})
        self._stream = self._container.add_stream(
            "libx264", rate=Fraction(self.fps).limit_denominator(1000))
        self._stream.options = {"crf": str(self.crf), "preset": self.preset}
        self._size = None
        return self

    def write(self, picture: Picture) -> None:
        import av

        array = np.ascontiguousarray(np.asarray(
            picture.convert("RGB") if isinstance(picture, Image.Image) else picture,
            dtype=np.uint8))
        if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] % 2 or array.shape[1] % 2:
            raise ValueError(f"MP4 frames need RGB pictures with even sides, got {array.shape}")
        if self._size is None:
            self._size = array.shape
            self._stream.width, self._stream.height = array.shape[1], array.shape[0]
            self._stream.pix_fmt = "yuv420p"
        elif array.shape != self._size:
            raise ValueError("MP4 frames must all be RGB of the same size")
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
            self._container.mux(packet)
        self.count += 1

    def __exit__(self, kind, value, traceback) -> bool:
        try:
            if kind is None:
                if self.count == 0:
                    raise ValueError("an animation needs at least one frame")
                for packet in self._stream.encode():
                    self._container.mux(packet)
            self._container.close()
        except BaseException as error:
            with contextlib.suppress(Exception):
                self._container.close()
            self._atomic.__exit__(type(error), error, error.__traceback__)
            raise
        self._atomic.__exit__(kind, value, traceback)
        return False


def figure_pixels(figure: Figure, dpi: int = 100) -> np.ndarray:
    """``figure`` drawn on an Agg canvas at ``dpi`` by matplotlib's own saving path (the one
    ``savefig`` takes), as an RGB array ``(H, W, 3)`` uint8; the figures are opaque, so the
    alpha channel dropped is 255 everywhere."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.print_figure(io.BytesIO(), dpi=dpi, format="rgba")
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])


def save_figure(figure: Figure, path: Path, dpi: int = 100) -> None:
    """Write a matplotlib figure as PNG: its pixels (:func:`figure_pixels`) through
    :func:`save_png`, the one PNG encoder."""
    save_png(figure_pixels(figure, dpi), path)
    figure.clear()  # release the artists now rather than at garbage collection


def save_npy(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as temp:
        with open(temp, "wb") as handle:
            np.save(handle, np.asarray(array, dtype=np.float32))


def save_npz(arrays: Mapping[str, np.ndarray], path: Path) -> None:
    """``arrays`` (name -> array) as one uncompressed ``.npz`` file."""
    with atomic_path(path) as temp:
        with open(temp, "wb") as handle:
            np.savez(handle, **arrays)
