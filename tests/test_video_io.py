"""Clip discovery, frame decoding, sampling, preprocessing and label parsing."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_frames
from utils.io.labels import epic_class_names, parse_label, resolve_class
from utils.io.clips import ClipError, ClipSource, find_clips, load_frames, preprocess, sample_indices

KINETICS = ["playing bass", "playing bass guitar", "playing guitar", "abseiling"]


@pytest.mark.parametrize("name, expected", [
    ("playing bass guitar-JVAwfvQUlwA_46_10", "playing bass guitar"),
    ("playing bass-xyz", "playing bass"),
    ("abseiling-BkIhp07ge9E_22_10", "abseiling"),
    ("abseiling", None),                 # no '-' after the name
    ("juggling-abc", None),              # unknown class is not an error
    ("playing bass guitarist-1", None),  # a class name must be followed by '-'
])
def test_parse_label_kinetics(name, expected):
    assert parse_label(name, KINETICS) == expected


def test_parse_label_epic_verbs_with_dashes():
    verbs = epic_class_names("verb")
    assert verbs[:2] == ["take", "put"] and "turn-on" in verbs
    assert parse_label("turn-on-P01_01_12", verbs) == "turn-on"
    assert parse_label("turn-P01", verbs) == "turn"
    assert epic_class_names("noun")[1] == "pan"


def test_resolve_class():
    assert resolve_class("Playing Guitar", KINETICS) == 2
    assert resolve_class("3", KINETICS) == 3
    with pytest.raises(ValueError, match="similar: playing bass"):
        resolve_class("bass", KINETICS)


def test_sample_indices_uniform_and_looped():
    assert sample_indices(16, 16).tolist() == list(range(16))
    assert sample_indices(32, 4).tolist() == [4, 12, 20, 28]       # segment centres
    assert sample_indices(3, 7).tolist() == [0, 1, 2, 0, 1, 2, 0]  # looped


def test_frames_natural_order_and_other_files_ignored(tmp_path):
    frames = write_frames(tmp_path / "c-1", 12, ext=".png")
    (tmp_path / "c-1" / "notes.txt").write_text("not a frame")
    loaded, total = load_frames(ClipSource(tmp_path / "c-1", False), 12)
    assert total == 12
    np.testing.assert_array_equal(loaded, frames)   # frame2 before frame10


def test_short_clip_loops_with_warning(tmp_path):
    frames = write_frames(tmp_path / "c-1", 3, ext=".bmp")
    with pytest.warns(UserWarning, match="3 frames, looped to 8"):
        loaded, _ = load_frames(ClipSource(tmp_path / "c-1", False), 8)
    np.testing.assert_array_equal(loaded[3], frames[0])


def test_grayscale_and_rgba_become_rgb(tmp_path):
    folder = tmp_path / "g-1"
    folder.mkdir()
    Image.fromarray(np.full((8, 8), 200, np.uint8), "L").save(folder / "a.png")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128
    Image.fromarray(rgba, "RGBA").save(folder / "b.png")
    loaded, _ = load_frames(ClipSource(folder, False), 2)
    assert loaded.shape == (2, 8, 8, 3)
    assert (loaded[0] == 200).all()
    assert loaded[1, 0, 0].tolist() == [128, 0, 0]   # half-transparent red over black


def test_empty_and_corrupt_clips_raise(tmp_path):
    (tmp_path / "empty-1").mkdir()
    with pytest.raises(ClipError, match="holds no frames"):
        load_frames(ClipSource(tmp_path / "empty-1", False), 4)
    write_frames(tmp_path / "bad-1", 2)
    (tmp_path / "bad-1" / "frame3.png").write_bytes(b"not a png")
    with pytest.raises(ClipError, match="frame3.png"):
        load_frames(ClipSource(tmp_path / "bad-1", False), 3)


def test_find_clips_layouts(tmp_path):
    write_frames(tmp_path / "root" / "b-2", 2)
    write_frames(tmp_path / "root" / "a-10", 2)
    write_frames(tmp_path / "root" / "a-9", 2)
    frames = write_frames(tmp_path / "frames", 2)
    gif = tmp_path / "root" / "a-1.gif"
    Image.fromarray(frames[0]).save(gif, save_all=True, append_images=[Image.fromarray(frames[1])])
    names = [c.name for c in find_clips(tmp_path / "root")]
    assert names == ["a-1", "a-9", "a-10", "b-2"]
    assert [c.is_video for c in find_clips(tmp_path / "root")] == [True, False, False, False]
    assert find_clips(tmp_path / "frames")[0].path == tmp_path / "frames"   # one clip folder
    assert find_clips(gif)[0].is_video                                      # one video file
    with pytest.raises(FileNotFoundError):
        find_clips(tmp_path / "missing")


def test_video_file_decoded_with_pyav(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "playing guitar-vid.mp4"
    levels = [20, 60, 100, 140, 180, 220]
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
    clip = find_clips(path)[0]
    loaded, total = load_frames(clip, 3)
    assert total == 6 and loaded.shape == (3, 48, 64, 3)
    # uniform sampling picks frames 1, 3, 5 (segment centres); lossy codec: within a few levels
    np.testing.assert_allclose(loaded.reshape(3, -1).mean(1), [60, 140, 220], atol=4)


def test_gif_decoded(tmp_path):
    frames = [np.full((10, 12, 3), v, np.uint8) for v in (0, 128, 255)]
    path = tmp_path / "x-1.gif"
    Image.fromarray(frames[0]).save(path, save_all=True,
                                    append_images=[Image.fromarray(f) for f in frames[1:]])
    loaded, total = load_frames(ClipSource(path, True), 3)
    assert total == 3
    assert loaded[:, 0, 0, 0].tolist() == [0, 128, 255]


def test_preprocess_keeps_aspect_and_centre_crops():
    # 2 frames of 40x80 (H x W) with a marker column at the horizontal centre
    frames = np.zeros((2, 40, 80, 3), np.uint8)
    frames[:, :, 39:41] = 255
    clip = preprocess(frames, resize=20, crop=20)
    assert clip.shape == (3, 2, 20, 20)
    # short side 40 -> 20 (scale 0.5), width 80 -> 40, centre crop keeps columns 10..29
    column_means = clip[0, 0].mean(0)
    assert column_means.argmax().item() in (9, 10)
    assert column_means[9:11].sum() > 0.9 and column_means[:5].max() == 0
    assert 0.0 <= clip.min() and clip.max() <= 1.0
    # no resize needed: exact crop of the input
    same = preprocess(frames[:, :, 20:60], resize=40, crop=40)
    np.testing.assert_allclose(same.permute(1, 2, 3, 0).numpy() * 255, frames[:, :, 20:60], atol=1e-4)
