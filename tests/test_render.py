"""Encoders: PNG bytes decode to the picture, the animation's cursor walks along the per-frame
bars in GIF and MP4 alike, MP4s decode with PyAV to one frame per clip frame, files are whole."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from utils.render import encoders, outputs
from utils.render import figures as vis

T, H, W = 6, 24, 32


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.random((T, H, W, 3)).astype(np.float32)
    display = vis.normalize_map(np.maximum(rng.standard_normal((T, H, W)), 0).astype(np.float32))
    importance = np.array([0.1, 0.3, 0.05, 0.25, 0.2, 0.1])
    return frames, display, importance


def _caption(**changes):
    fields = dict(clip="ironing-aaa", label="ironing", prediction="abseiling", probability=0.61,
                  target="ironing", method="grad_cam", model="i3d", polarity="positive",
                  extra=("layer Mixed_5c, grid 2 x 7 x 7",))
    fields.update(changes)
    return vis.Caption(**fields)


def _animation(style="jet", attention=None):
    frames, display, importance = _inputs()
    overlays = vis.overlay(frames, display, style)
    lines = _caption().header_lines()
    legend = vis.legend_entries(style, "ironing")
    pictures = vis.animation_frames(frames, overlays, lines, importance, attention, style, legend,
                                    vis.time_note(2, T), min_side=96)
    layout = vis.animation_layout(H, W, lines, legend, True, attention is not None,
                                  vis.time_note(2, T), min_side=96)
    return pictures, layout, frames, overlays


def _cursor_rows(layout, name="importance"):
    box = dict((n, b) for n, b, _ in layout.charts)[name]
    return box[3] + 1, box[3] + 1 + 6, vis.bar_slots(box, T)


def _cursor_at(picture, layout, name="importance", tolerance=0):
    """Indices of the bar slots under which the cursor is drawn."""
    top, bottom, slots = _cursor_rows(layout, name)
    return [t for t, (s, e) in enumerate(slots)
            if (np.abs(picture[top:bottom, s:e].astype(int) - vis.CURSOR_COLOUR) <= tolerance).all()]


@pytest.mark.parametrize("use_isal", [True, False])
def test_png_bytes_decode_exactly(use_isal):
    """Both deflate paths (ISA-L, zlib) give PNGs that decode to the very pixels."""
    if use_isal:
        pytest.importorskip("isal")
    rng = np.random.default_rng(1)
    picture = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    picture[5:20] = picture[5]                                     # runs for the 'up' filter
    decoded = np.asarray(Image.open(io.BytesIO(encoders.png_bytes(picture, use_isal=use_isal))))
    np.testing.assert_array_equal(decoded, picture)
    with pytest.raises(ValueError, match="RGB uint8"):
        encoders.png_bytes(picture.astype(np.float32))


def test_animation_frames_layout_and_cursor():
    attention = np.linspace(0.2, 1.0, T)
    pictures, layout, frames, overlays = _animation(attention=attention)
    assert len(pictures) == T and layout.scale == 4
    assert layout.width % 2 == 0 and layout.height % 2 == 0
    assert all(p.shape == (layout.height, layout.width, 3) and p.dtype == np.uint8 for p in pictures)
    fx0, fy0, fx1, fy1 = layout.frame_box
    ox0, oy0, ox1, oy1 = layout.overlay_box
    assert ox0 > fx1 - 1 and fy0 == oy0                      # side by side
    for t in (0, T - 1):
        np.testing.assert_array_equal(pictures[t][fy0:fy1:4, fx0:fx1:4], vis.to_uint8(frames[t]))
        np.testing.assert_array_equal(pictures[t][oy0:oy1:4, ox0:ox1:4], vis.to_uint8(overlays[t]))
    # the cursor sits under frame t's bar, in both charts, and nowhere else
    for t in range(T):
        assert _cursor_at(pictures[t], layout) == [t]
        assert _cursor_at(pictures[t], layout, "attention") == [t]
    top, bottom, slots = _cursor_rows(layout)
    changed = np.abs(pictures[0][top:bottom].astype(int) - pictures[4][top:bottom]).sum(axis=(0, 2))
    moved = np.nonzero(changed)[0]
    assert moved.min() == slots[0][0] and moved.max() == slots[4][1] - 1
    assert not changed[slots[1][0]:slots[3][1]].any()
    # header text and colour bar are the same on every frame
    np.testing.assert_array_equal(pictures[0][:fy0], pictures[3][:fy0])
    bx0, by0, bx1, by1 = layout.colour_bar
    np.testing.assert_array_equal(pictures[2][by0:by1, bx0:bx1], pictures[5][by0:by1, bx0:bx1])


def test_animation_header_wraps_and_colour_bar_signed():
    pictures, layout, _, _ = _animation("diverging")
    assert layout.header_lines[0] == "ironing-aaa"
    assert any("prediction: abseiling (0.61)" in line for line in layout.header_lines)
    assert max(vis.font_for(12).getlength(line) for line in layout.header_lines) <= layout.width - 20
    x0, y0, x1, y1 = layout.colour_bar
    column = pictures[0][y0:y1, (x0 + x1) // 2]
    expected = vis.to_uint8(vis.colour_bar_colours("diverging", np.linspace(1, -1, y1 - y0)))
    np.testing.assert_array_equal(column, expected)
    assert [t for _, t, _, _ in layout.legend_items] == ["red: for ironing", "blue: against ironing"]


def test_changing_boxes_hold_every_difference_between_frames():
    attention = np.linspace(0.2, 1.0, T)
    for pictures, layout, _, _ in (_animation(), _animation("diverging", attention)):
        outside = np.ones(pictures.shape[1:3], dtype=bool)
        for x0, y0, x1, y1 in layout.changing_boxes():
            outside[y0:y1, x0:x1] = False
        assert outside.mean() > 0.5
        for t in range(1, T):
            np.testing.assert_array_equal(pictures[t][outside], pictures[0][outside])
        # each box does change (none is there for nothing)
        for x0, y0, x1, y1 in layout.changing_boxes():
            assert (pictures[:, y0:y1, x0:x1] != pictures[0, y0:y1, x0:x1]).any()


def test_palette_mapping_of_the_changing_boxes_only_is_exact():
    """With the changing boxes, every frame's indices are what mapping that whole frame to the
    returned palette gives, and the palette is as close to the pictures as without them."""
    pictures, layout, _, _ = _animation("diverging", np.linspace(0.2, 1.0, T))
    indices, palette = encoders.paletted_frames(pictures, changing=layout.changing_boxes())
    reference = Image.new("P", (1, 1))
    reference.putpalette(palette)
    for t in range(T):
        whole = Image.fromarray(pictures[t]).quantize(palette=reference, dither=Image.Dither.NONE)
        np.testing.assert_array_equal(indices[t], np.asarray(whole))
    colours = np.array(palette[:768], dtype=int).reshape(-1, 3)
    full_indices, full_palette = encoders.paletted_frames(pictures)
    full_colours = np.array(full_palette[:768], dtype=int).reshape(-1, 3)
    error = np.abs(colours[indices] - pictures).mean()
    assert error <= 1.2 * np.abs(full_colours[full_indices] - pictures).mean() + 0.1
    # the unchanging smooth parts keep their share of the palette: the colour bar is as
    # finely graded as with the whole stack sampled
    x0, y0, x1, y1 = layout.colour_bar
    bar = pictures[0, y0:y1, (x0 + x1) // 2].astype(int)
    bar_error = np.abs(colours[indices[0, y0:y1, (x0 + x1) // 2]] - bar).mean()
    full_bar_error = np.abs(full_colours[full_indices[0, y0:y1, (x0 + x1) // 2]] - bar).mean()
    assert bar_error <= 1.25 * full_bar_error + 0.25, (bar_error, full_bar_error)


def test_gif_frames_follow_the_cursor(tmp_path):
    pictures, layout, _, _ = _animation()
    path = tmp_path / "a.gif"
    encoders.save_gif(pictures, path, changing=layout.changing_boxes())
    with Image.open(path) as gif:
        assert gif.n_frames == T and gif.size == (layout.width, layout.height)
        decoded = []
        for index in range(T):
            gif.seek(index)
            decoded.append(np.asarray(gif.convert("RGB")))
    for t, (picture, frame) in enumerate(zip(pictures, decoded)):
        assert np.abs(frame.astype(int) - picture).mean() < 8        # 256 colours of noise
        assert _cursor_at(frame, layout, tolerance=12) == [t]
    assert not list(tmp_path.glob(".*"))


def test_mp4_decodes_to_one_frame_per_clip_frame(tmp_path):
    av = pytest.importorskip("av")
    pictures, layout, _, _ = _animation()
    path = tmp_path / "a.mp4"
    encoders.save_mp4(pictures, path)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.codec_context.width, stream.codec_context.height) == (layout.width, layout.height)
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        assert stream.codec_context.pix_fmt == "yuv420p"
    assert len(decoded) == T
    top, bottom, slots = _cursor_rows(layout)
    for t, (picture, frame) in enumerate(zip(pictures, decoded)):
        assert frame.shape == picture.shape
        assert np.abs(frame.astype(int) - picture).mean() < 12       # lossy, chroma subsampled
        darkest = [frame[top:bottom, s:e].mean() for s, e in slots]  # the cursor is near black
        assert int(np.argmin(darkest)) == t and min(darkest) < 60
    with pytest.raises(ValueError, match="even sides"):
        encoders.save_mp4([np.zeros((11, 12, 3), np.uint8)], tmp_path / "odd.mp4")
    assert not (tmp_path / "odd.mp4").exists() and not list(tmp_path.glob(".*"))


def test_write_visuals_writes_requested_formats(tmp_path):
    frames, display, importance = _inputs()
    names = outputs.write_visuals(tmp_path, "clip", ["npy", "mp4", "png", "gif"], frames, display,
                                 "jet", _caption(), outputs.DrawOptions(importance, time_steps=2))
    assert names == ["clip.png", "clip.gif", "clip.mp4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    grid = np.asarray(Image.open(tmp_path / "clip.png"))
    layout = vis.grid_layout(T, H, W, _caption().title_lines(), vis.legend_entries("jet", "ironing"),
                             True, False, vis.time_note(2, T))
    assert grid.shape == (layout.height, layout.width, 3)
    assert outputs.write_visuals(tmp_path, "none", ["npy"], frames, display, "jet", _caption()) == []


def test_failed_render_leaves_no_file(tmp_path):
    frames, display, importance = _inputs()
    with pytest.raises(ValueError, match="importance has 2 values"):
        outputs.write_visuals(tmp_path, "clip", ["png", "gif"], frames, display, "jet", _caption(),
                             outputs.DrawOptions(importance[:2]))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dpi", [100, 72])
def test_saved_figure_has_savefigs_pixels_through_the_one_png_encoder(tmp_path, dpi):
    from matplotlib.figure import Figure

    def drawn() -> Figure:
        figure = Figure(figsize=(3.3, 2.1))
        top, bottom = figure.subplots(2, 1)
        picture = top.imshow(np.random.default_rng(0).random((8, 12)), cmap="inferno")
        figure.colorbar(picture, ax=top)
        bottom.plot([0, 1, 3, 2], label="a line")
        bottom.legend()
        figure.suptitle("t=3, layer Mixed_5c")
        return figure

    buffer = io.BytesIO()
    drawn().savefig(buffer, dpi=dpi, format="png")
    expected = np.asarray(Image.open(buffer).convert("RGBA"))
    assert (expected[..., 3] == 255).all()                # opaque: nothing is lost with alpha
    encoders.save_figure(drawn(), tmp_path / "figure.png", dpi=dpi)
    with Image.open(tmp_path / "figure.png") as saved:
        assert saved.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(saved), expected[..., :3])
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]
