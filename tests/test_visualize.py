"""The pictures themselves: overlay colours against matplotlib, and the frame grid checked pixel
by pixel (tiles, colour bars and their ticks, legend, charts, notes)."""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib import colormaps

from utils.render import figures as vis

T, H, W = 10, 28, 28          # two blocks of the 8-column grid, tiles upscaled x4 to 112


def _clip(seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.random((T, H, W, 3)).astype(np.float32)
    saliency = rng.standard_normal((T, H, W)).astype(np.float32)
    return frames, saliency


def _dark(region: np.ndarray, level: int = 110) -> int:
    """Number of pixels dark enough to be text."""
    return int((region.max(axis=-1) < level).sum())


def _signed(style) -> bool:
    return style == "diverging" or style in vis.DIVERGING_MAPS


@pytest.mark.parametrize("style", ["inferno", "viridis", "jet", "diverging", "coolwarm"])
def test_overlay_matches_matplotlib_colour_maps(style):
    frames, saliency = _clip()
    display = vis.normalize_map(saliency if _signed(style) else np.maximum(saliency, 0))
    name = vis.DEFAULT_DIVERGING if style == "diverging" else style
    position = (display + 1) / 2 if _signed(style) else display
    alpha = np.abs(display)[..., None] ** 0.8
    expected = (1 - alpha) * frames + alpha * colormaps[name](position)[..., :3]
    np.testing.assert_allclose(vis.overlay(frames, display, style), expected, atol=1e-5)


@pytest.mark.parametrize("style", ["jet", "diverging", "inferno", "magma",
                                   vis.Style("viridis", False, 0.6), vis.Style("PuOr_r", True, 0.3)])
def test_uint8_overlay_is_the_float_overlay_rounded(style):
    """The writers' fast blend (opacity from a table, one rounding) lands within one level of
    the float reference, and on exactly the same level for most pixels."""
    frames, saliency = _clip(3)
    signed = vis.as_style(style).signed
    display = vis.normalize_map(saliency if signed else np.maximum(saliency, 0))
    display[0, 0, :4] = [0.0, 1e-4, 0.999, 1.0] if not signed else [-1.0, -1e-4, 1e-4, 1.0]
    reference = vis.to_uint8(vis.overlay(frames, display, style)).astype(int)
    fast = vis.overlay_uint8(frames, display, style)
    assert fast.dtype == np.uint8 and fast.shape == reference.shape
    difference = np.abs(fast.astype(int) - reference)
    assert difference.max() <= 1
    assert (difference == 0).mean() > 0.75
    # uint8 frames give the same picture as their float form
    np.testing.assert_array_equal(vis.overlay_uint8(vis.to_uint8(frames), display, style), fast)


def test_stamped_text_is_what_pillow_draws():
    """The writers' kept text masks give the very pixels of ImageDraw.text, on white and on
    colour, in black and grey, the first time and from the cache; long texts and fractional
    positions go to Pillow directly."""
    from PIL import Image, ImageDraw
    font = vis.StampFont(13)
    for background in ((255, 255, 255), (200, 120, 40)):
        for text in ("t=3", "0.5", "gy|Q", "map share per frame", "x" * 40, "y" * 200):
            for xy in ((5, 7), (0, 0), (10.6, 3.2), (-4, -6), (300, 20), (-3.5, 1.25)):
                for fill in (vis.BLACK, vis.GREY_TEXT):
                    expected = Image.new("RGB", (320, 30), background)
                    ImageDraw.Draw(expected).text(xy, text, fill=fill, font=font.font)
                    for _ in range(2):                       # drawn, then stamped from the cache
                        got = Image.new("RGB", (320, 30), background)
                        font.draw(got, xy, text, fill)
                        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
                        array = np.full((30, 320, 3), background, dtype=np.uint8)
                        font.draw(array, xy, text, fill)     # on an array, in place
                        np.testing.assert_array_equal(array, np.asarray(expected))
    assert "t=3" in font._masks and "x" * 40 in font._masks and "y" * 200 not in font._masks
    assert font.getlength("t=3") == font.font.getlength("t=3")
    # the blend is Pillow's paste arithmetic for every mask, canvas and ink value
    mask = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 256, axis=1)
    for ink in ((0, 0, 0), (80, 80, 80), (255, 127, 14), (1, 254, 128)):
        canvas = np.repeat(np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 256, 0), 3, 2)
        expected = Image.fromarray(canvas)
        expected.paste(ink, (0, 0), Image.fromarray(mask))
        vis.blend_mask(canvas, 0, 0, mask, ink)
        np.testing.assert_array_equal(canvas, np.asarray(expected))
    clipped = np.zeros((4, 4, 3), dtype=np.uint8)                # clipped at the edges
    vis.blend_mask(clipped, -2, 3, np.full((3, 3), 255, dtype=np.uint8), (9, 9, 9))
    assert clipped[3, :1].tolist() == [[9, 9, 9]] and clipped[:3].max() == 0 and clipped[3, 1:].max() == 0
    small = vis.StampFont(12, limit=2)
    for text in ("a", "b", "a", "c"):
        small.draw(Image.new("RGB", (20, 20)), (0, 0), text, vis.BLACK)
    assert list(small._masks) == ["a", "c"]                      # bounded, least recently used out
    tight = vis.StampFont(13, max_bytes=6000)                    # and bounded in bytes
    for text in ("first text", "second text", "a third, longer text to keep"):
        tight.draw(np.full((40, 400, 3), 255, dtype=np.uint8), (0, 10), text, vis.BLACK)
    assert tight._patches.bytes <= 6000 and tight._masks.bytes <= 6000
    assert ("first text", vis.BLACK) not in tight._patches
    assert ("a third, longer text to keep", vis.BLACK) in tight._patches


def test_opacity_overlays_by_hand():
    frames = np.full((1, 1, 2, 3), 0.5, dtype=np.float32)
    display = np.array([[[0.0, 1.0 / 32]]], dtype=np.float32)       # (1/32)^0.8 = 1/16
    colour = colormaps["inferno"](8)[:3]                             # floor(256 / 32) = row 8
    full = vis.overlay(frames, display, "inferno")[0, 0]
    np.testing.assert_allclose(full[0], [0.5, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(full[1], 0.5 * 15 / 16 + np.asarray(colour) / 16, atol=1e-6)
    half = vis.overlay(frames, display, vis.Style("inferno", False, 0.5))[0, 0, 1]   # a = 1/32
    np.testing.assert_allclose(half, 0.5 * 31 / 32 + np.asarray(colour) / 32, atol=1e-6)
    uint8 = vis.overlay((frames * 255).astype(np.uint8), display, "inferno")
    np.testing.assert_allclose(uint8, vis.overlay(frames * 254.0 / 255 * 255 / 254, display, "inferno"), atol=0.01)
    with pytest.raises(ValueError, match="unknown overlay style"):
        vis.overlay(frames, display, "green")
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="opacity"):
            vis.Style("inferno", False, bad)


def test_maps_polarity_normalisation_and_shares():
    saliency = np.array([[[1.0, -3.0]], [[2.0, 0.0]]], dtype=np.float32)    # (T=2, 1, 2)
    np.testing.assert_array_equal(vis.apply_polarity(saliency, "negative"), [[[0, 3]], [[0, 0]]])
    np.testing.assert_allclose(vis.frame_importance(vis.apply_polarity(saliency, "positive")), [1 / 3, 2 / 3])
    np.testing.assert_allclose(vis.normalize_map(saliency, percentile=100), saliency / 3)
    assert vis.normalize_map(np.zeros((2, 1, 2))).max() == 0
    with pytest.raises(ValueError, match="unknown polarity"):
        vis.apply_polarity(saliency, "all")
    # unsigned maps and one side of a signed map: sequential; a signed map under both: diverging
    assert vis.overlay_style(False, "positive") == vis.Style("inferno", False)
    assert vis.overlay_style(True, "positive") == vis.Style("inferno", False)
    assert vis.overlay_style(True, "negative") == vis.Style("inferno", False)
    assert vis.overlay_style(True, "both") == vis.Style("RdBu_r", True)
    assert vis.overlay_style(True, "both", "PuOr_r", 0.5) == vis.Style("PuOr_r", True, 0.5)
    assert vis.reduce_channels(np.ones((3, 2, 1, 1))).tolist() == [[[3.0]], [[3.0]]]


def test_legend_words_name_the_colours_drawn():
    def dominant(rgb):
        return "rgb"[int(np.argmax(rgb))]

    entries = vis.legend_entries("diverging", "ironing")
    assert [text for _, text in entries] == ["red: for ironing", "blue: against ironing"]
    assert dominant(entries[0][0]) == "r" and dominant(entries[1][0]) == "b"
    # the colours named are the ends of the overlay's own scale
    full = vis.overlay(np.zeros((1, 1, 2, 3)), np.array([[[1.0, -1.0]]]), "diverging")[0, 0]
    assert entries[0][0] == tuple(int(round(c * 255)) for c in full[0])
    assert entries[1][0] == tuple(int(round(c * 255)) for c in full[1])
    (top, text), (middle, half) = vis.legend_entries("inferno", "ironing")
    assert text == "pale yellow: strongest evidence for ironing" and half == "red: half as strong"
    assert top == tuple(int(round(c * 255)) for c in colormaps["inferno"](255)[:3])
    assert dominant(middle) == "r" and min(top) > 150               # pale yellow: bright
    assert "against" in vis.legend_entries("jet", "x", "negative")[0][1]


def test_layer_text_time_steps_and_note():
    info = {"target_layer": "Mixed_5c", "layer_grid": "2x7x7"}
    assert vis.layer_text(info) == "layer Mixed_5c, grid 2 x 7 x 7"
    assert vis.map_time_steps(info) == 2 and vis.map_time_steps({}) is None
    assert vis.layer_text({"completeness_gap": 0.1}) is None
    assert vis.time_note(2, 16) == "map has 2 time steps: per-frame bar is interpolated"
    assert vis.time_note(1, 16) == "map has 1 time step: per-frame bar is interpolated"
    assert vis.time_note(16, 16) is None and vis.time_note(None, 16) is None


def _grid(style="jet", attention=None, note=None, legend=True, lines=("clip-a", "label: x")):
    frames, saliency = _clip()
    display = vis.normalize_map(saliency if _signed(style) else np.maximum(saliency, 0))
    overlays = vis.overlay(frames, display, style)
    importance = np.linspace(0.0, 1.0, T)
    importance /= importance.sum()
    legend_entries = vis.legend_entries(style, "ironing") if legend else None
    image = vis.render_grid_image(frames, overlays, lines, importance, attention, style,
                                  legend_entries, note)
    layout = vis.grid_layout(T, H, W, lines, legend_entries, True, attention is not None, note)
    return np.asarray(image), layout, frames, overlays, importance


def test_grid_tiles_are_the_frames_and_overlays():
    pixels, layout, frames, overlays, _ = _grid()
    assert pixels.shape == (layout.height, layout.width, 3) and layout.scale == 4
    assert len(layout.frame_boxes) == T and len(layout.colour_bars) == 2   # one bar per overlay row
    for t in (0, 7, 8, 9):
        x0, y0, x1, y1 = layout.frame_boxes[t]
        expected = np.repeat(np.repeat(vis.to_uint8(frames[t]), 4, 0), 4, 1)
        np.testing.assert_array_equal(pixels[y0:y1, x0:x1], expected)
        x0, y0, x1, y1 = layout.overlay_boxes[t]
        np.testing.assert_array_equal(pixels[y0:y1:4, x0:x1:4], vis.to_uint8(overlays[t]))
    # frame 8 starts the second block: first column, below the first block
    assert layout.frame_boxes[8][0] == layout.frame_boxes[0][0]
    assert layout.frame_boxes[8][1] > layout.overlay_boxes[0][3]


@pytest.mark.parametrize("style", ["jet", "diverging", "inferno"])
def test_colour_bars_show_the_overlay_scale_with_ticks(style):
    pixels, layout, *_ = _grid(style)
    signed = _signed(style)
    for box in layout.colour_bars:
        x0, y0, x1, y1 = box
        column = pixels[y0:y1, (x0 + x1) // 2]
        values = np.linspace(1.0, -1.0 if signed else 0.0, y1 - y0)
        np.testing.assert_array_equal(column, vis.to_uint8(vis.colour_bar_colours(style, values)))
        # ticks: text right of the bar at the top, middle and bottom
        for value, _ in vis.colour_bar_ticks(style):
            y = int(round(y0 + (1.0 - value) / (2.0 if signed else 1.0) * (y1 - y0 - 1)))
            assert _dark(pixels[max(0, y - 7):y + 7, x1 + 5:x1 + 30]) > 5, value
    top, bottom = pixels[y0, x0], pixels[y1 - 1, x0]
    middle = pixels[(y0 + y1) // 2, x0]
    if signed:       # red for, grey at zero, blue against
        assert top[0] > top[2] + 60 and bottom[2] > bottom[0] + 80
        assert np.abs(middle.astype(int) - 128).max() <= 3
    else:            # from the overlay colour at full strength down to plain grey
        assert np.abs(bottom.astype(int) - 128).max() <= 1
        assert np.abs(top.astype(int) - 128).max() > 100
    assert [t for _, t in vis.colour_bar_ticks(style)] == (["+1", "0", "-1"] if signed else ["1", "0.5", "0"])


def test_legend_and_title_are_drawn():
    pixels, layout, *_ = _grid("diverging", lines=("clip-a", "label: x   " + "long words " * 30))
    assert len(layout.title_lines) >= 3                     # the long line was wrapped
    assert layout.title_lines[0] == "clip-a"
    for y in layout.title_y:
        assert _dark(pixels[y:y + 16, 10:400]) > 20
    assert [text for _, text, _, _ in layout.legend_items] == ["red: for ironing", "blue: against ironing"]
    for colour, text, x, y in layout.legend_items:
        np.testing.assert_array_equal(pixels[y + 8, x + 6], colour)        # the swatch
        assert _dark(pixels[y:y + 16, x + 18:x + 18 + 60]) > 20            # the words
    pixels, layout, *_ = _grid(legend=False)
    assert layout.legend_items == ()


def test_charts_show_shares_attention_and_note():
    attention = np.zeros(T)
    attention[3] = 1.0
    pixels, layout, _, _, importance = _grid(attention=attention, note=vis.time_note(2, T))
    charts = {name: box for name, box, _ in layout.charts}
    x0, y0, x1, y1 = charts["importance"]
    slots = vis.bar_slots(charts["importance"], T)
    heights = []
    for start, stop in slots:
        column = pixels[y0:y1 - 1, (start + stop) // 2]
        heights.append(int((column == vis.IMPORTANCE_COLOUR).all(axis=1).sum()))
    expected = np.round((y1 - y0) * importance / importance.max()).astype(int)
    assert heights[0] == 0 and heights[-1] == y1 - y0 - 1               # baseline row drawn over
    np.testing.assert_allclose(heights[1:-1], expected[1:-1], atol=1)
    ax0, ay0, ax1, ay1 = charts["attention"]
    blue = [(pixels[ay0:ay1 - 1, (s + e) // 2] == vis.ATTENTION_COLOUR).all(axis=1).sum()
            for s, e in vis.bar_slots(charts["attention"], T)]
    assert blue[3] == ay1 - ay0 - 1 and sum(blue) == blue[3]
    assert layout.time_note_y is not None
    assert _dark(pixels[layout.time_note_y:layout.time_note_y + 15, 10:300], 200) > 20
    _, plain, *_ = _grid()
    assert plain.time_note_y is None and [name for name, _, _ in plain.charts] == ["importance"]


def test_bad_inputs_are_refused():
    frames, saliency = _clip()
    with pytest.raises(ValueError, match="must both be"):
        vis.render_grid_image(frames, frames[:-1], ["x"])
    with pytest.raises(ValueError, match="importance has 3 values for 10 frames"):
        vis.render_grid_image(frames, frames, ["x"], np.ones(3))


def test_long_text_is_cut_to_the_longest_prefix_that_fits():
    font = vis.font_for(12)
    text = "dark red: strongest evidence for circle moving down"
    for width in (30, 100, 200):
        cut = vis.fit_text(font, text, width)
        prefix = cut[:-3]
        assert cut.endswith("...") and text.startswith(prefix) and font.getlength(cut) <= width
        assert font.getlength(text[:len(prefix) + 1] + "...") > width
    assert vis.fit_text(font, text, 1000) == text
