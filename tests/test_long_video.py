"""Windowed runs over long videos (--window / --stride): window times from the container, the
timeline CSV against the model's own softmax, resume after a kill (seeking past the recorded
windows), one bad window, and demo_3dcnn's per-window accuracy on synthetic clips joined into
one video."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import torch

import main
from models import get_model_spec
from utils.demo.long_video import joined_frames, truth_json, window_truth
from utils.io.atomic import write_text
from utils.io.clips import ClipSource, preprocess, sample_indices, shrink
from utils.io import stream
from utils.io.stream import Span, parse_span, sliding_windows, stream_frames, window_plan
from utils.pipeline.settings import RunSettings
from utils.pipeline.setup import load_model
from utils.pipeline.windows import WindowSettings, _Model, run_video
from utils.render.encoders import Mp4Writer

LENGTHS = (32, 40, 48, 36, 44, 40)       # 240 frames, six segments


def write_joined(path: Path, lengths=LENGTHS, seed: int = 3, fps: float = 25.0):
    clips, segments = joined_frames(lengths, seed)
    with Mp4Writer(path, fps, crf=12) as writer:
        for frames in clips:
            for frame in frames:
                writer.write(frame)
    write_text(path.with_suffix(".truth.json"), truth_json(segments, fps))
    return segments


@pytest.fixture(scope="module")
def joined(tmp_path_factory):
    folder = tmp_path_factory.mktemp("joined")
    path = folder / "joined.mp4"
    return path, write_joined(path)


@pytest.fixture(scope="module")
def demo():
    spec = get_model_spec("demo_3dcnn")
    names = spec.class_names("synthetic")
    adapter = load_model(spec, None, "synthetic", torch.device("cpu"), names, None)
    return adapter, names


def _settings(tmp_path, **changes) -> RunSettings:
    values = dict(methods=("grad_cam",), model_name="demo_3dcnn", out_dir=tmp_path,
                  target="pred", progress=False, method_options={"grad_cam": {}})
    values.update(changes)
    return RunSettings(**values)


def test_spans_and_default_window():
    assert parse_span("16") == Span(16, False) and parse_span("2s") == Span(2, True)
    assert parse_span("0.64s").frames(25) == 16
    for bad in ("0", "-3", "1.5", "abc", "2 m", ""):
        with pytest.raises(ValueError):
            parse_span(bad)
    # the model's 16-frame clip at 25 fps lasts 0.64 s: 16 frames at 25 fps, 32 at 50 fps
    assert window_plan(25.0, 16, 25.0, None, None) == (16, 16)
    assert window_plan(50.0, 16, 25.0, None, None) == (32, 32)
    assert window_plan(30.0, 16, 25.0, Span(2, True), Span(8, False)) == (60, 8)


def test_window_times_come_from_the_container(tmp_path):
    """Frames at known, uneven times (a 0.5 s pause after frame 9): each window's start is its
    first frame's presentation time, its end the last frame's time plus one period."""
    times = [i * 0.04 for i in range(10)] + [0.5 + 0.36 + i * 0.04 for i in range(14)]
    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, 1000)
        stream.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 10, np.uint8),
                                               format="rgb24")
            frame.pts = int(round(t * 1000))
            frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frames = list(stream_frames(ClipSource(path, True), None, 25.0))
    assert [round(f.time, 3) for f in frames] == [round(t, 3) for t in times]
    windows = list(sliding_windows(iter(frames), 8, 8, 25.0))
    # 24 frames: windows at 0, 8, 16 exactly; nothing left over
    assert [(w.start, w.stop) for w in windows] == [(0, 8), (8, 16), (16, 24)]
    for w in windows:
        assert w.start_time == pytest.approx(times[w.start], abs=1e-3)
        assert w.end_time == pytest.approx(times[w.stop - 1] + 0.04, abs=1e-3)
    # a tail shorter than the stride gets a last window ending on the last frame
    tail = list(sliding_windows(iter(frames), 10, 10, 25.0))
    assert [(w.start, w.stop) for w in tail] == [(0, 10), (10, 20), (14, 24)]


def test_timeline_csv_is_the_models_softmax(tmp_path, joined, demo):
    path, segments = joined
    adapter, names = demo
    model = _Model(adapter, _settings(tmp_path), names, torch.device("cpu"), 16)
    result = run_video(ClipSource(path, True), "joined", model, _settings(tmp_path),
                       WindowSettings(Span(16, False), Span(12, False)), names, tmp_path,
                       batch_size=3)
    table = pd.read_csv(tmp_path / "joined_timeline.csv")
    # 240 frames, window 16, stride 12: starts 0, 12, ..., 216 (19 windows) and 224 (the tail)
    assert list(table["start_frame"]) == list(range(0, 217, 12)) + [224]
    assert (table["status"] == "ok").all() and result.failed_windows == 0
    # the model's softmax on each window decoded independently, all frames in memory
    with av.open(str(path)) as container:
        every = [shrink(f.to_ndarray(format="rgb24"), adapter.resize)
                 for f in container.decode(video=0)]
    assert len(every) == 240
    for _, row in table.iterrows():
        window = np.stack(every[row["start_frame"]:row["stop_frame"]])
        clip = preprocess(window[sample_indices(len(window), 16)], adapter.resize, adapter.crop)
        with torch.no_grad():
            expected = adapter(adapter.normalize(clip)[None]).softmax(1)[0].numpy()
        got = row[[f"p:{n}" for n in names]].to_numpy(float)
        np.testing.assert_allclose(got, expected, atol=2e-6)
        assert row["top1"] == names[int(expected.argmax())]
        assert row["target"] == row["top1"]          # --target pred
        assert row["start_s"] == pytest.approx(row["start_frame"] / 25.0)
    with av.open(str(tmp_path / "joined_timeline.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 240   # every frame of the video
    maps = np.load(tmp_path / "joined_maps" / "w000000.npy")
    assert maps.shape[:2] == (1, 16) and maps.max() > 0


def test_resume_continues_from_the_last_finished_window(tmp_path, joined, demo):
    path, _ = joined
    adapter, names = demo
    settings = _settings(tmp_path)
    plan = WindowSettings(Span(16, False), Span(16, False), video=False)

    class Killed(Exception):
        pass

    def kill_after_two_batches(recorded):
        if recorded >= 4:
            raise Killed

    first = _Model(adapter, settings, names, torch.device("cpu"), 16)
    with pytest.raises(Killed):
        run_video(ClipSource(path, True), "joined", first, settings, plan, names, tmp_path,
                  batch_size=2, after_batch=kill_after_two_batches)
    assert first.windows == 4 and not (tmp_path / "joined_timeline.csv").exists()
    log = tmp_path / ".joined_windows.jsonl"
    with open(log, "a") as handle:       # the kill cut the next line short
        handle.write('{"window": 4, "start_fr')
    second = _Model(adapter, settings, names, torch.device("cpu"), 16)
    result = run_video(ClipSource(path, True), "joined", second, settings, plan, names,
                       tmp_path, batch_size=2)
    assert second.windows == 15 - 4 and second.calls == 6       # windows 4..14 only
    assert [r["window"] for r in result.rows] == list(range(15))
    assert len(pd.read_csv(tmp_path / "joined_timeline.csv")) == 15
    assert not log.exists()


def _write_keyframed(path: Path, lengths=LENGTHS, gop: int = 12) -> None:
    """The joined clips as an MP4 with a keyframe every ``gop`` frames (so a resume can seek)."""
    clips, _ = joined_frames(lengths, 3)
    with av.open(str(path), "w") as container:
        out = container.add_stream("libx264", rate=25)
        out.height, out.width = clips[0].shape[1:3]
        out.pix_fmt = "yuv420p"
        out.options = {"crf": "12", "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
        for frame in np.concatenate(clips):
            for packet in out.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in out.encode():
            container.mux(packet)


class _CountingContainer:
    """A PyAV input container that counts the frames its packets decode to."""

    def __init__(self, container, counter):
        self._container, self._counter = container, counter

    def __getattr__(self, name):
        return getattr(self._container, name)

    def __enter__(self):
        self._container.__enter__()
        return self

    def __exit__(self, *exc):
        return self._container.__exit__(*exc)

    def demux(self, *args, **kwargs):
        for packet in self._container.demux(*args, **kwargs):
            yield _CountingPacket(packet, self._counter)


class _CountingPacket:
    def __init__(self, packet, counter):
        self._packet, self._counter = packet, counter

    def __getattr__(self, name):
        return getattr(self._packet, name)

    def decode(self):
        frames = self._packet.decode()
        self._counter[0] += len(frames)
        return frames


class Killed(Exception):
    pass


def _killed_then_resumed(source, folder, demo, plan, kill_at, batch_size=2):
    """A run killed once ``kill_at`` windows are recorded, then resumed: ``(resumed run's
    model, result)``."""
    adapter, names = demo
    settings = _settings(folder)

    def kill(recorded):
        if recorded >= kill_at:
            raise Killed

    with pytest.raises(Killed):
        run_video(source, "clip", _Model(adapter, settings, names, torch.device("cpu"), 16),
                  settings, plan, names, folder, batch_size=batch_size, after_batch=kill)
    assert len((folder / ".clip_windows.jsonl").read_text().splitlines()) == kill_at + 1
    model = _Model(adapter, settings, names, torch.device("cpu"), 16)
    return model, lambda: run_video(source, "clip", model, settings, plan, names, folder,
                                    batch_size=batch_size)


def _table(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "clip_timeline.csv").drop(columns="seconds")


def test_resume_seeks_the_video_past_the_recorded_windows(tmp_path, demo, monkeypatch):
    """Killed after 8 of 20 windows (16 frames every 12), the resumed run seeks to the keyframe
    at the last recorded window's first frame (84) and decodes from there; its CSV is the
    uninterrupted run's, row for row."""
    path = tmp_path / "keyed.mp4"
    _write_keyframed(path)
    decoded = [0]
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: _CountingContainer(real_open(*a, **k), decoded))
    adapter, names = demo
    plan = WindowSettings(Span(16, False), Span(12, False), video=False)
    source = ClipSource(path, True)
    full = tmp_path / "full"
    run_video(source, "clip", _Model(adapter, _settings(full), names, torch.device("cpu"), 16),
              _settings(full), plan, names, full, batch_size=2)
    assert decoded[0] == 240
    model, resume = _killed_then_resumed(source, tmp_path / "resumed", demo, plan, kill_at=8)
    decoded[0] = 0
    result = resume()
    assert model.windows == 20 - 8
    assert decoded[0] == 240 - 84                       # from the keyframe at frame 84 on
    assert [r["window"] for r in result.rows] == list(range(20))
    pd.testing.assert_frame_equal(_table(tmp_path / "resumed"), _table(full))


def test_resume_seek_falls_back_to_decoding_from_the_start(tmp_path, joined, demo):
    """A video with one keyframe (the fixture's): the seek lands on frame 0, decoding drops the
    frames before the last recorded window; the rows are still the uninterrupted run's."""
    path, _ = joined
    adapter, names = demo
    plan = WindowSettings(Span(16, False), Span(16, False), video=False)
    full = tmp_path / "full"
    run_video(ClipSource(path, True), "clip", _Model(adapter, _settings(full), names,
                                                     torch.device("cpu"), 16),
              _settings(full), plan, names, full, batch_size=2)
    model, resume = _killed_then_resumed(ClipSource(path, True), tmp_path / "resumed", demo,
                                         plan, kill_at=6)
    resume()
    assert model.windows == 15 - 6
    pd.testing.assert_frame_equal(_table(tmp_path / "resumed"), _table(full))


@pytest.mark.parametrize("kill_at, read", [(2, 72 - 16), (4, 72 - 48)])
def test_resume_skips_the_recorded_frame_files(tmp_path, demo, monkeypatch, kill_at, read):
    """72 frame files, windows of 16 side by side (0, 16, 32, 48 and the last, 56-72): the
    resumed run reads the files from the last recorded window's first frame on only, and its
    rows are the uninterrupted run's (the last window too)."""
    clips, _ = joined_frames((24, 24, 24), seed=5)
    folder = tmp_path / "frames"
    folder.mkdir()
    from PIL import Image
    for i, frame in enumerate(np.concatenate(clips)):
        Image.fromarray(frame).save(folder / f"{i:05d}.png")
    reads = [0]
    real_read = stream.read_frame

    def counting_read(*args, **kwargs):
        reads[0] += 1
        return real_read(*args, **kwargs)

    monkeypatch.setattr(stream, "read_frame", counting_read)
    adapter, names = demo
    plan = WindowSettings(Span(16, False), None, video=False)
    source = ClipSource(folder, False)
    full = tmp_path / "full"
    run_video(source, "clip", _Model(adapter, _settings(full), names, torch.device("cpu"), 16),
              _settings(full), plan, names, full, batch_size=1)
    assert reads[0] == 72 and len(_table(full)) == 5
    model, resume = _killed_then_resumed(source, tmp_path / "resumed", demo, plan,
                                         kill_at=kill_at, batch_size=1)
    reads[0] = 0
    resume()
    assert reads[0] == read and model.windows == 5 - kill_at
    pd.testing.assert_frame_equal(_table(tmp_path / "resumed"), _table(full))


def test_a_corrupt_window_is_one_error(tmp_path, demo):
    clips, _ = joined_frames((24, 24), seed=5)
    folder = tmp_path / "videos" / "long"
    folder.mkdir(parents=True)
    from PIL import Image
    for i, frame in enumerate(np.concatenate(clips)):
        Image.fromarray(frame).save(folder / f"{i:05d}.png")
    (folder / "00020.png").write_bytes(b"not a png")        # inside window 1 (16..31)
    out = tmp_path / "out"
    code = main.main(["--videos_dir", str(folder), "--model", "demo_3dcnn", "--no_gpu",
                      "--window", "16", "--out_dir", str(out), "--quiet", "--target", "pred"])
    assert code == 1                                        # a window failed
    table = pd.read_csv(out / "grad_cam" / "demo_3dcnn" / "long_timeline.csv")
    assert list(table["status"]) == ["ok", "error", "ok"]
    assert "00020.png" in table.loc[1, "error"]
    summary = pd.read_csv(out / "grad_cam" / "demo_3dcnn" / "summary.csv")
    assert list(summary["status"]) == ["ok"] and "1 of 3 windows failed" in summary["error"][0]
    page = (out / "grad_cam" / "demo_3dcnn" / "index.html").read_text()
    for name in ("long_timeline.mp4", "long_timeline.png", "long_timeline.csv"):
        assert f'"{name}"' in page
    # the explorer page shows the failed window as failed, without a frame or map
    explore = (out / "grad_cam" / "demo_3dcnn" / "long.explore.html").read_text()
    data = json.loads(explore.split('id="timeline-data">', 1)[1].split("</script>", 1)[0])
    assert [w["status"] for w in data["windows"]] == ["ok", "error", "ok"]
    assert data["windows"][1]["frame"] is None and data["windows"][1]["p"] is None
    assert "00020.png" in data["windows"][1]["error"]
    # a rerun resumes: the finished video is skipped
    again = main.main(["--videos_dir", str(folder), "--model", "demo_3dcnn", "--no_gpu",
                       "--window", "16", "--out_dir", str(out), "--quiet", "--target", "pred"])
    assert again == 0


ACCURACY_MIN = 0.85


def test_demo_3dcnn_per_window_accuracy(tmp_path, joined):
    """On six joined synthetic clips, demo_3dcnn's top class per 16-frame window matches the
    class covering most of the window in at least 85% of the windows."""
    path, segments = joined
    out = tmp_path / "out"
    code = main.main(["--videos_dir", str(path), "--model", "demo_3dcnn", "--no_gpu",
                      "--window", "auto", "--stride", "8", "--out_dir", str(out), "--quiet",
                      "--target", "pred"])
    assert code == 0
    table = pd.read_csv(out / "grad_cam" / "demo_3dcnn" / "joined_timeline.csv")
    truth = [window_truth(segments, a, b) for a, b in zip(table["start_frame"],
                                                          table["stop_frame"])]
    accuracy = float(np.mean(table["top1"].to_numpy() == np.array(truth)))
    assert accuracy >= ACCURACY_MIN, accuracy
    assert json.loads(path.with_suffix(".truth.json").read_text())["fps"] == 25.0


def test_bad_window_flags_exit_2(tmp_path, joined, capsys):
    path, _ = joined
    for flags in (["--window", "2x"], ["--stride", "0"], ["--window", "16", "--fps", "0"],
                  ["--window", "16", "--vis_method", "grad_cam,gradients"]):
        with pytest.raises(SystemExit) as stop:
            main.main(["--videos_dir", str(path), "--model", "demo_3dcnn", "--no_gpu",
                       "--out_dir", str(tmp_path), *flags])
        assert stop.value.code == 2


def test_topk_explains_each_windows_top_classes(tmp_path, joined, demo):
    path, _ = joined
    adapter, names = demo
    settings = _settings(tmp_path, target="label", topk=2)
    model = _Model(adapter, settings, names, torch.device("cpu"), 16)
    run_video(ClipSource(path, True), "joined", model, settings,
              WindowSettings(Span(0.64, True), None, video=False), names, tmp_path, batch_size=4)
    table = pd.read_csv(tmp_path / "joined_timeline.csv")
    assert len(table) == 15
    assert (table["target"] == table["top1"]).all() and (table["target_2"] == table["top2"]).all()
    np.testing.assert_allclose(table["target_p_2"], table["top2_p"])
    maps = np.load(tmp_path / "joined_maps" / "w000003.npy")
    assert maps.shape == (2, 16, 28, 28)
    assert not np.allclose(maps[0], maps[1])      # two classes, two different maps
