"""The clip reader on awkward input: mixed folders, hidden files, symlink loops, every image mode,
EXIF rotation, huge or absurd frames, videos decoded frame-selectively, truncated and corrupt
files. Every input is built in tmp_path; expected pixels are computed by hand."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import utils.io.clips as video
from tests.conftest import write_frames
from utils.io.clips import ClipError, ClipSource, find_clips, load_frames, preprocess, read_frame

# torchvision 0.29 warns on each decode_jpeg call (the batch decoder tested at the end)
pytestmark = pytest.mark.filterwarnings(f"ignore:{video.DECODE_DEPRECATION}:DeprecationWarning")


# -- finding clips ------------------------------------------------------------------------------
def test_stray_frame_beside_clip_folders_is_ignored_with_warning(tmp_path):
    write_frames(tmp_path / "a-1", 2)
    write_frames(tmp_path / "b-2", 2)
    Image.new("RGB", (4, 4)).save(tmp_path / "thumbnail.jpg")
    with pytest.warns(UserWarning, match=r"ignored 1 frame file.*thumbnail\.jpg"):
        clips = find_clips(tmp_path)
    assert [c.name for c in clips] == ["a-1", "b-2"]
    assert not any(c.path == tmp_path for c in clips)


def test_stray_frames_beside_a_video_are_ignored(tmp_path):
    frames = write_frames(tmp_path, 2)
    Image.fromarray(frames[0]).save(tmp_path / "x-1.gif", save_all=True,
                                    append_images=[Image.fromarray(frames[1])])
    with pytest.warns(UserWarning, match="frame1.png, frame2.png"):
        clips = find_clips(tmp_path)
    assert [(c.name, c.is_video) for c in clips] == [("x-1", True)]


def test_frames_only_folder_is_one_clip_without_warning(tmp_path):
    write_frames(tmp_path / "c-1", 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clips = find_clips(tmp_path / "c-1")
    assert clips == [ClipSource(tmp_path / "c-1", False)]


def test_hidden_and_macos_companion_files_ignored(tmp_path):
    frames = write_frames(tmp_path / "c-1", 3)
    clip = tmp_path / "c-1"
    (clip / "._frame1.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")   # not an image
    (clip / ".hidden.png").write_bytes(b"junk")
    (tmp_path / "._c-1").mkdir()                         # a hidden folder is no clip
    (tmp_path / ".cache").mkdir()
    (tmp_path / "._v-1.mp4").write_bytes(b"\x00\x05\x16\x07")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clips = find_clips(tmp_path)
    assert [c.name for c in clips] == ["c-1"]
    loaded, total = load_frames(clips[0], 3)
    assert total == 3
    np.testing.assert_array_equal(loaded, frames)
    # a frames-only folder whose only extra files are hidden stays one clip
    assert find_clips(clip) == [ClipSource(clip, False)]


def test_symlink_loops_skipped_with_warning(tmp_path):
    root = tmp_path / "root"
    write_frames(root / "a-1", 2)
    (root / "self").symlink_to(root)                     # loops back to the folder itself
    (root / "up").symlink_to(tmp_path)                   # to an ancestor
    (root / "l1").symlink_to(root / "l2")                # l1 -> l2 -> l1: ELOOP
    (root / "l2").symlink_to(root / "l1")
    (root / "gone").symlink_to(root / "missing")         # dangling
    with pytest.warns(UserWarning) as caught:
        clips = find_clips(root)
    assert [c.name for c in clips] == ["a-1"]
    text = " ".join(str(w.message) for w in caught)
    for name in ("self", "up", "l1", "l2", "gone"):
        assert f"skipped {name}:" in text


# -- image modes --------------------------------------------------------------------------------
def _one_frame_clip(tmp_path, image: Image.Image, name: str = "f.png", **save) -> np.ndarray:
    folder = tmp_path / f"m-{name}"
    folder.mkdir()
    image.save(folder / name, **save)
    loaded, _ = load_frames(ClipSource(folder, False), 1)
    assert loaded.dtype == np.uint8 and loaded.shape[-1] == 3
    return loaded[0]


def test_16bit_png_scaled_not_white(tmp_path):
    values = np.array([[0, 257, 32896, 65535, 1000]], np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    frame = _one_frame_clip(tmp_path, image)
    # v * 255 / 65535 rounded: 0, 1, 128, 255, 3.89 -> 4
    assert frame[0, :, 0].tolist() == [0, 1, 128, 255, 4]
    assert (frame == frame[..., :1]).all()


def test_32bit_integer_mode_scaled_from_16bit_range():
    image = Image.fromarray(np.array([[0, 32896, 65535, 70000, -5]], np.int32), "I")
    frame = video._to_rgb_array(image)
    assert frame[0, :, 1].tolist() == [0, 128, 255, 255, 0]


def test_palette_la_l_rgba_one_bit_modes(tmp_path):
    palette = Image.new("P", (3, 1))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putdata([0, 1, 1])
    assert _one_frame_clip(tmp_path, palette, "p.png")[0].tolist() == \
        [[10, 20, 30], [200, 100, 50], [200, 100, 50]]

    la = Image.fromarray(np.array([[[200, 255], [200, 0], [100, 51]]], np.uint8), "LA")
    # over black: 200 opaque, 200 transparent -> 0, 100 * 51/255 = 20
    assert _one_frame_clip(tmp_path, la, "la.png")[0, :, 0].tolist() == [200, 0, 20]

    grey = Image.fromarray(np.array([[7, 250]], np.uint8), "L")
    assert _one_frame_clip(tmp_path, grey, "l.png")[0].tolist() == [[7, 7, 7], [250, 250, 250]]

    rgba = Image.fromarray(np.array([[[255, 100, 0, 255], [255, 100, 0, 0]]], np.uint8), "RGBA")
    assert _one_frame_clip(tmp_path, rgba, "rgba.png")[0].tolist() == [[255, 100, 0], [0, 0, 0]]

    bits = Image.new("1", (3, 1))
    bits.putdata([0, 1, 0])
    frame = _one_frame_clip(tmp_path, bits, "b.png")
    assert frame[0, :, 2].tolist() == [0, 255, 0]


def test_palette_with_transparent_index_over_black(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([255, 255, 255, 0, 200, 0] + [0] * 762)
    image.putdata([0, 1])
    frame = _one_frame_clip(tmp_path, image, "t.png", transparency=0)
    assert frame[0].tolist() == [[0, 0, 0], [0, 200, 0]]


def test_cmyk_jpeg(tmp_path):
    # CMYK (0, 255, 255, 0) is red; K = 128 alone is grey (255 - 128) = 127. JPEG: a few levels.
    image = Image.new("CMYK", (16, 8), (0, 255, 255, 0))
    image.paste((0, 0, 0, 128), (8, 0, 16, 8))
    frame = _one_frame_clip(tmp_path, image, "c.jpg", quality=95)
    np.testing.assert_allclose(frame[4, 2], [255, 0, 0], atol=6)
    np.testing.assert_allclose(frame[4, 13], [127, 127, 127], atol=6)


def test_exif_rotated_jpeg_is_upright(tmp_path):
    # stored 16 high x 32 wide, left half black, right half white; orientation 6 means "rotate
    # 90 degrees clockwise to display": shown 32 high x 16 wide, top half black, bottom white.
    stored = np.zeros((16, 32, 3), np.uint8)
    stored[:, 16:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    frame = _one_frame_clip(tmp_path, Image.fromarray(stored), "r.jpg", exif=exif, quality=95)
    assert frame.shape == (32, 16, 3)
    assert frame[:14].max() < 20 and frame[18:].min() > 235


# -- corrupt, empty, absurd frames --------------------------------------------------------------
def _frame_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("name, content, reason", [
    ("random.png", bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8)),
     "not an image"),
    ("zero.png", b"", "empty file"),
    ("half.png", _frame_bytes("PNG")[:2000], None),
    ("half.jpg", _frame_bytes("JPEG")[:600], None),
    ("head.png", _frame_bytes("PNG")[:40], None),
])
def test_bad_frames_give_one_line_clip_errors(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ClipError) as caught:
        read_frame(tmp_path / name)
    message = str(caught.value)
    assert message.startswith(f"cannot read frame {name}: ") and "\n" not in message
    assert "IndexError" not in message and "Traceback" not in message
    if reason:
        assert reason in message


def test_absurd_frame_sizes_refused_from_the_header(tmp_path):
    Image.new("L", (20000, 1)).save(tmp_path / "line.png")
    with pytest.raises(ClipError, match=r"line.png is 20000x1: aspect ratio above 10:1"):
        read_frame(tmp_path / "line.png", resize=256)


def test_huge_frame_refused_before_decoding(tmp_path, monkeypatch):
    Image.new("L", (300, 200)).save(tmp_path / "big.png")
    monkeypatch.setattr(video, "MAX_FRAME_PIXELS", 50_000)
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1))
    with pytest.raises(ClipError, match="big.png is 300x200, more than 50000 pixels"):
        read_frame(tmp_path / "big.png")
    assert decoded == []


# -- shrinking right after decoding -------------------------------------------------------------
def test_frames_shrunk_on_read_match_preprocess_of_full_frames(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "s-1"
    folder.mkdir()
    smooth = rng.integers(0, 256, (4, 12, 16, 3)).astype(np.uint8)
    for i, small in enumerate(smooth):
        big = np.asarray(Image.fromarray(small).resize((160, 120), Image.BILINEAR))
        Image.fromarray(big).save(folder / f"f{i}.png")
    full, _ = load_frames(ClipSource(folder, False), 4)
    shrunk, total = load_frames(ClipSource(folder, False), 4, resize=30)
    assert total == 4 and full.shape == (4, 120, 160, 3) and shrunk.shape == (4, 30, 40, 3)
    reference = preprocess(full, resize=30, crop=24)
    early = preprocess(shrunk, resize=30, crop=24)
    # the only difference is the uint8 rounding of the shrunk frames
    assert (early - reference).abs().max().item() <= 0.5 / 255 + 1e-6


def test_jpeg_draft_decoding_reads_a_smaller_image(tmp_path):
    # 800x600 of one colour: with resize=100 the JPEG is decoded at 1/4 scale (200x150) or less
    Image.new("RGB", (800, 600), (30, 140, 220)).save(tmp_path / "j.jpg", quality=95)
    sizes = []
    original = video.shrink
    def video_shrink(frame, resize):
        sizes.append(frame.shape[:2])
        return original(frame, resize)
    try:
        video.shrink = video_shrink
        frame = read_frame(tmp_path / "j.jpg", resize=100)
    finally:
        video.shrink = original
    assert frame.shape == (100, 133, 3)
    assert sizes[0][0] < 600 and sizes[0][0] >= 100
    np.testing.assert_allclose(frame[50, 60], [30, 140, 220], atol=4)


def test_exif_rotated_jpeg_with_draft_keeps_orientation(tmp_path):
    stored = np.zeros((200, 400, 3), np.uint8)
    stored[:, 200:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif, quality=95)
    frame = read_frame(tmp_path / "r.jpg", resize=50)
    assert frame.shape == (100, 50, 3)       # shown 400 high x 200 wide, short side 50
    assert frame[:45].max() < 20 and frame[55:].min() > 235


# -- videos -------------------------------------------------------------------------------------
def _level(i: int) -> int:
    return 16 + (i * 37) % 224      # neighbouring frames differ by >= 37 levels


def _write_video(path: Path, num_frames: int, size=(24, 32), options=None):
    av = pytest.importorskip("av")
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full(size + (3,), _level(i), np.uint8),
                                               format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])   # mkv: no frame count, packets counted
def test_video_converts_only_the_sampled_frames(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"v-1{suffix}"
    _write_video(path, 300)
    converted = []
    original = video.shrink
    monkeypatch.setattr(video, "shrink",
                        lambda frame, resize: (converted.append(frame.shape), original(frame, resize))[1])
    frames, total = load_frames(ClipSource(path, True), 8, resize=12)
    # segment centres of 300 frames in 8: floor((k + 0.5) * 37.5)
    expected = [18, 56, 93, 131, 168, 206, 243, 281]
    assert total == 300 and frames.shape == (8, 12, 16, 3) and frames.dtype == np.uint8
    assert len(converted) == 8                       # 8 conversions, not 300
    np.testing.assert_allclose(frames.reshape(8, -1).mean(1), [_level(i) for i in expected],
                               atol=6)


def test_video_frame_repeats_converted_once(tmp_path, monkeypatch):
    path = tmp_path / "short-1.mp4"
    _write_video(path, 3)
    calls = []
    original = video.shrink
    monkeypatch.setattr(video, "shrink",
                        lambda frame, resize: (calls.append(1), original(frame, resize))[1])
    with pytest.warns(UserWarning, match="3 frames, looped to 7"):
        frames, total = load_frames(ClipSource(path, True), 7)
    assert total == 3 and len(calls) == 3
    np.testing.assert_allclose(frames.reshape(7, -1).mean(1),
                               [_level(i % 3) for i in range(7)], atol=6)


def test_truncated_video_warns_and_samples_what_decodes(tmp_path):
    whole = tmp_path / "whole.mp4"
    # the frame count sits at the start of the file (faststart), the frames after it
    _write_video(whole, 200, options={"movflags": "faststart"})
    data = whole.read_bytes()
    cut = tmp_path / "cut-1.mp4"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.warns(UserWarning, match=r"decoded (\d+) of 200 frames") as caught:
        frames, total = load_frames(ClipSource(cut, True), 4)
    decoded = int(next(w for w in caught if "decoded" in str(w.message)).message.args[0]
                  .split("decoded ")[1].split(" ")[0])
    assert 40 < decoded < 200 and total == decoded
    # (the last decoded frame may be partly concealed garbage; the sample stays before it)
    expected = video.sample_indices(decoded, 4)
    np.testing.assert_allclose(frames.reshape(4, -1).mean(1), [_level(i) for i in expected],
                               atol=6)


def test_audio_only_file_has_no_video_stream(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "sound-1.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        for _ in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate = 8000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(ClipError, match=r"^video sound-1.mp4 has no video stream \(streams: audio\)$"):
        load_frames(ClipSource(path, True), 4)


@pytest.mark.parametrize("name, content", [
    ("text-1.mp4", b"this is a text file, not a video\n"),
    ("zero-1.mkv", b""),
    ("noise-1.avi", bytes(np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8))),
])
def test_non_videos_give_one_line_clip_errors(tmp_path, name, content):
    pytest.importorskip("av")
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ClipError) as caught:
        load_frames(ClipSource(tmp_path / name, True), 4)
    message = str(caught.value)
    assert name in message and "\n" not in message and "IndexError" not in message
    assert message.count(name) == 1


def test_gif_samples_only_needed_frames(tmp_path):
    levels = [0, 40, 80, 120, 160, 200]
    images = [Image.fromarray(np.full((6, 8, 3), v, np.uint8)) for v in levels]
    images[0].save(tmp_path / "g-1.gif", save_all=True, append_images=images[1:])
    frames, total = load_frames(ClipSource(tmp_path / "g-1.gif", True), 3)
    assert total == 6 and frames[:, 0, 0, 0].tolist() == [40, 120, 200]   # frames 1, 3, 5


# -- frame folders decoded in one batch on the run's device --------------------------------------
# The batch path (torchvision.io.decode_jpeg, nvjpeg on CUDA) runs here with device="cpu": the
# same function, the same calls, libjpeg instead of nvjpeg.
KINETICS = sorted((Path(__file__).resolve().parents[1] / "test_data" / "kinetics").iterdir())


def _decode_calls(monkeypatch) -> list:
    import torchvision.io as tv_io
    calls, decode = [], tv_io.decode_jpeg
    monkeypatch.setattr(tv_io, "decode_jpeg",
                        lambda images, *a, **k: calls.append(len(images)) or decode(images, *a, **k))
    return calls


@pytest.mark.parametrize("resize", [None, 256])
def test_batch_jpeg_decode_equals_pillow_on_kinetics(monkeypatch, resize):
    calls = _decode_calls(monkeypatch)
    for folder in KINETICS:
        clip = ClipSource(folder, False)
        pillow, total = load_frames(clip, 16, resize)
        batched, total_batched = load_frames(clip, 16, resize, decode_device="cpu")
        assert total_batched == total and batched.shape == pillow.shape
        # measured: 0 grey levels apart on all 64 bundled frames (CPU libjpeg)
        assert np.abs(batched.astype(int) - pillow).max() <= 1
    assert calls == [16] * len(KINETICS)            # one call per clip, each sampled frame once


def test_batch_jpeg_decode_shrinks_full_frames_like_preprocess():
    # Below half the frame size Pillow decodes at a reduced DCT scale (draft); the batch path
    # decodes the full frame and shrinks it, so it matches preprocessing the full frames.
    clip = ClipSource(KINETICS[0], False)
    full, _ = load_frames(clip, 8)
    batched, _ = load_frames(clip, 8, 128, decode_device="cpu")
    assert batched.shape == (8, 128, 172, 3)
    assert (preprocess(batched, 128, 112) - preprocess(full, 128, 112)).abs().max() < 0.01


def test_batch_decoder_failure_falls_back_to_pillow(monkeypatch):
    import torchvision.io as tv_io

    def broken(*args, **kwargs):
        raise RuntimeError("nvjpeg is not available")

    monkeypatch.setattr(tv_io, "decode_jpeg", broken)
    clip = ClipSource(KINETICS[1], False)
    fallback, _ = load_frames(clip, 16, 256, decode_device="cuda")
    pillow, _ = load_frames(clip, 16, 256)
    assert np.array_equal(fallback, pillow)


@pytest.mark.parametrize("content", [
    _frame_bytes("JPEG")[:600],                                             # truncated
    _frame_bytes("JPEG")[:300] + bytes(400) + b"\xff\xd9",                  # garbage inside
])
def test_corrupt_jpeg_keeps_the_one_line_frame_error(tmp_path, monkeypatch, content):
    folder = tmp_path / "bad-1"
    folder.mkdir()
    (folder / "1.jpg").write_bytes(_frame_bytes("JPEG"))
    (folder / "2.jpg").write_bytes(content)
    with pytest.raises(ClipError) as caught:
        load_frames(ClipSource(folder, False), 2, decode_device="cpu")
    message = str(caught.value)
    assert message.startswith("cannot read frame 2.jpg: ") and "\n" not in message
    with pytest.raises(ClipError) as pillow:
        load_frames(ClipSource(folder, False), 2)
    assert str(pillow.value) == message


def test_frames_decode_jpeg_cannot_read_as_pillow_go_to_pillow(tmp_path, monkeypatch):
    # PNG frames, an EXIF-rotated JPEG (decode_jpeg rotates on the CPU only) and a CMYK JPEG
    calls = _decode_calls(monkeypatch)
    write_frames(tmp_path / "png-1", 2)
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "rot-1").mkdir()
    Image.new("RGB", (32, 16)).save(tmp_path / "rot-1" / "1.jpg", exif=exif)
    (tmp_path / "cmyk-1").mkdir()
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk-1" / "1.jpg")
    for name in ("png-1", "rot-1", "cmyk-1"):
        clip = ClipSource(tmp_path / name, False)
        assert np.array_equal(load_frames(clip, 1, decode_device="cpu")[0],
                              load_frames(clip, 1)[0])
    assert calls == []
    assert load_frames(ClipSource(tmp_path / "rot-1", False), 1, decode_device="cpu")[0].shape \
        == (1, 32, 16, 3)


def test_the_run_decodes_on_its_gpu_only():
    import torch

    from utils.pipeline.setup import decode_device
    assert decode_device(torch.device("cpu")) is None
    assert decode_device("cpu") is None
    assert decode_device(torch.device("cuda", 1)) == torch.device("cuda", 1)


def test_decoder_deprecation_is_not_a_clip_warning():
    import torch
    import torchvision.io as tv_io
    data = torch.frombuffer(bytearray(_frame_bytes("JPEG")), dtype=torch.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        video.ignore_decoder_deprecation()
        tv_io.decode_jpeg([data])
    assert caught == []


# -- videos decoded by torchcodec on the run's device, PyAV otherwise ----------------------------
def _levels_video(path: Path, levels=(20, 60, 100, 140, 180, 220)) -> Path:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4",
                                      rate=6)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for level in levels:
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), level, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _fake_torchcodec(monkeypatch, decoder_class) -> None:
    import sys
    import types
    package, decoders = types.ModuleType("torchcodec"), types.ModuleType("torchcodec.decoders")
    decoders.VideoDecoder = decoder_class
    package.decoders = decoders
    monkeypatch.setitem(sys.modules, "torchcodec", package)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", decoders)


def test_video_without_torchcodec_is_read_by_pyav(tmp_path, monkeypatch):
    import sys
    clip = ClipSource(_levels_video(tmp_path / "v-1.mp4"), True)
    monkeypatch.setitem(sys.modules, "torchcodec", None)            # import fails: not installed
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    on_gpu, total = load_frames(clip, 3, decode_device="cuda")
    pyav, pyav_total = load_frames(clip, 3)
    assert total == pyav_total == 6 and np.array_equal(on_gpu, pyav)


def test_video_torchcodec_failure_falls_back_to_pyav(tmp_path, monkeypatch):
    class Broken:
        def __init__(self, source, device=None):
            raise RuntimeError("Failed to get current CUDA device.")

    clip = ClipSource(_levels_video(tmp_path / "v-1.mp4"), True)
    _fake_torchcodec(monkeypatch, Broken)
    assert np.array_equal(load_frames(clip, 3, decode_device="cuda")[0], load_frames(clip, 3)[0])


def test_video_decoded_by_torchcodec_on_the_run_device(tmp_path, monkeypatch):
    import torch
    made = []

    class Decoder:  # torchcodec's interface: len, metadata, get_frames_at(...).data NCHW uint8
        def __init__(self, source, device=None):
            made.append((source, device))
            self.metadata = type("Metadata", (), {"width": 40, "height": 30})()

        def __len__(self):
            return 10

        def get_frames_at(self, indices):
            frames = torch.stack([torch.full((3, 30, 40), 10 * i, dtype=torch.uint8)
                                  for i in indices])
            return type("FrameBatch", (), {"data": frames})()

    path = tmp_path / "v-1.mp4"
    path.write_bytes(b"never read by PyAV")
    _fake_torchcodec(monkeypatch, Decoder)
    frames, total = load_frames(ClipSource(path, True), 4, resize=15, decode_device="cuda")
    assert made == [(str(path), "cuda")] and total == 10
    assert frames.shape == (4, 15, 20, 3) and frames[:, 0, 0, 0].tolist() == [10, 30, 60, 80]
    with pytest.raises(ClipError, match="cannot decode video v-1.mp4"):   # CPU runs: PyAV only
        load_frames(ClipSource(path, True), 4)
    assert len(made) == 1


def test_real_torchcodec_on_the_cpu_equals_pyav(tmp_path):
    pytest.importorskip("torchcodec.decoders")   # not in requirements: checked where installed
    clip = ClipSource(_levels_video(tmp_path / "v-1.mp4"), True)
    frames, total = load_frames(clip, 4, decode_device="cpu")
    pyav, pyav_total = load_frames(clip, 4)
    assert total == pyav_total and np.array_equal(frames, pyav)
