"""Nothing lost, nothing silent: a corpus of bad inputs and options run through the command
line, concurrency, interruption, sharding. Every case asserts the exit status, the one-line
message naming the clip, that the good clips beside it were explained, and that no partial or
temporary file is left."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import main
from conftest import ROOT, write_frames

SYNTHETIC = ROOT / "test_data" / "synthetic"
PYTHON = sys.executable


def run_main(args, capsys):
    code = main.main([str(a) for a in args] + ["--no_gpu", "--quiet"])
    return code, capsys.readouterr().err


def leftovers(folder: Path) -> list:
    """Hidden or temporary files anywhere under an output folder (the part files excepted)."""
    return [p for p in folder.rglob("*")
            if p.name.startswith(".") and p.parent.name != "summary.parts"
            or ".tmp-" in p.name]


def assert_outputs_whole(folder: Path) -> pd.DataFrame:
    summary = pd.read_csv(folder / "summary.csv", keep_default_na=False, dtype=str)
    for outputs in summary.loc[summary["status"] == "ok", "outputs"]:
        for name in filter(None, outputs.split(";")):
            assert (folder / name).is_file(), name
    assert not leftovers(folder)
    return summary


def write_image(path: Path, mode: str, size=(40, 48), seed=0) -> None:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        array = rng.integers(0, 65536, size, dtype=np.uint16)
        Image.fromarray(array).save(path)
    elif mode == "CMYK":
        rgb.convert("CMYK").save(path.with_suffix(".jpg"))
    else:
        rgb.convert(mode).save(path)


def write_video(path: Path, frames: int, size=(40, 48)) -> None:
    import av
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = size[1], size[0], "yuv420p"
        rng = np.random.default_rng(1)
        for _ in range(frames):
            frame = rng.integers(0, 255, (size[0], size[1], 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ---------------------------------------------------------------- the corpus of bad clips

def _build_corpus(root: Path) -> dict:
    """Clip folder/file name -> expected outcome ('ok', 'error', 'skipped')."""
    cases = {}
    write_frames(root / "ironing-good", 8, seed=1)
    cases["ironing-good"] = "ok"
    (root / "ironing-empty").mkdir()
    cases["ironing-empty"] = "error"
    write_frames(root / "ironing-one frame", 1, seed=2)
    cases["ironing-one frame"] = "ok"
    mixed = root / "ironing-mixed sizes"
    write_frames(mixed, 4, seed=3)
    write_image(mixed / "frame9.png", "RGB", size=(20, 30))
    cases["ironing-mixed sizes"] = "error"
    for mode, name in (("L", "grey"), ("RGBA", "rgba"), ("CMYK", "cmyk"), ("I;16", "16bit"),
                       ("P", "palette"), ("LA", "la")):
        for i in range(4):
            write_image(root / f"ironing-{name}" / f"f{i}.png", mode, seed=i)
        cases[f"ironing-{name}"] = "ok"
    zero = root / "ironing-zero byte"
    write_frames(zero, 3)
    (zero / "frame9.png").write_bytes(b"")
    cases["ironing-zero byte"] = "error"
    truncated = root / "ironing-truncated"
    write_frames(truncated, 3)
    data = (truncated / "frame1.png").read_bytes()
    (truncated / "frame1.png").write_bytes(data[: len(data) // 2])
    cases["ironing-truncated"] = "error"
    garbage = root / "ironing-garbage"
    garbage.mkdir()
    (garbage / "frame1.png").write_bytes(os.urandom(300))
    cases["ironing-garbage"] = "error"
    (root / "ironing-text.mp4").write_text("not a video")
    cases["ironing-text.mp4"] = "error"
    write_video(root / "ironing-short.mp4", 10)
    cases["ironing-short.mp4"] = "ok"
    gif = [Image.new("RGBA", (30, 30), (255, 0, 0, 0 if i % 2 else 255)) for i in range(5)]
    gif[0].save(root / "ironing-transparent.gif", save_all=True, append_images=gif[1:])
    cases["ironing-transparent.gif"] = "ok"
    write_frames(root / "ironing-ünïcødé clip", 4, seed=5)
    cases["ironing-ünïcødé clip"] = "ok"
    write_frames(root / "ironing-semi;colon", 4, seed=6)
    cases["ironing-semi;colon"] = "ok"
    write_frames(root / "ironing-new\nline", 4, seed=7)
    cases["ironing-new\nline"] = "ok"
    write_frames(root / ("ironing-" + "x" * 240), 4, seed=8)
    cases["ironing-" + "x" * 240] = "ok"
    (root / "loop").symlink_to(root / "loop")
    cases["loop"] = "skipped"
    (root / "._ironing-good").write_bytes(b"\x00\x05\x16\x07")     # macOS metadata
    (root / ".hidden").mkdir()
    write_image(root / "thumbnail.jpg", "RGB")                       # stray frame beside clips
    return cases


def test_bad_input_corpus(tiny_spec, tmp_path, capsys):
    root = tmp_path / "clips"
    cases = _build_corpus(root)
    out = tmp_path / "out"
    code, err = run_main(["--videos_dir", root, "--out_dir", out, "--vis_method", "grad"], capsys)
    assert code == 1, err
    assert "Traceback" not in err
    folder = out / "grad" / "i3d"
    summary = assert_outputs_whole(folder)
    statuses = dict(zip(summary["clip"], summary["status"]))
    for name, expected in cases.items():
        clip_id = name[:-4] if name.endswith((".mp4", ".gif")) else name
        if expected == "skipped":
            assert clip_id not in statuses
            continue
        assert statuses.get(clip_id) == expected, (name, statuses.get(clip_id))
        if expected == "error":
            lines = [line for line in err.splitlines() if line.startswith(f"error: {clip_id}:")]
            assert len(lines) == 1, (name, err)
    # warnings name what was ignored or looped, on one line each
    assert "thumbnail.jpg" in err and "loop" in err
    assert "ironing-one frame: 1 frames, looped to 8" in err
    errors = sum(1 for v in cases.values() if v == "error")
    done = sum(1 for v in cases.values() if v == 'ok')
    assert f"{done} clips done now, 0 skipped as already done, {errors} failed" in err
    # odd names resume: a rerun skips every clip that was done
    code, err = run_main(["--videos_dir", root, "--out_dir", out, "--vis_method", "grad"], capsys)
    for name, expected in cases.items():
        clip_id = name[:-4] if name.endswith((".mp4", ".gif")) else name
        if expected == "ok":
            assert f"skip: {clip_id}: outputs exist" in err, name
    # outputs get the user's permissions, not 0600
    png = next(folder.glob("ironing-good.png"))
    assert png.stat().st_mode & 0o777 == 0o666 & ~current_umask()


def current_umask() -> int:
    from utils.io.atomic import current_umask as umask
    return umask()


# ---------------------------------------------------------- bad options: one line, exit 2

@pytest.fixture
def clips_dir(tmp_path):
    root = tmp_path / "clips"
    write_frames(root / "ironing-aaa", 8, seed=1)
    write_frames(root / "abseiling-bbb", 8, seed=2)
    return root


@pytest.mark.parametrize("extra, message", [
    (["--target", "99999"], "class index 99999 out of range"),
    (["--target", "no such class"], "unknown class 'no such class'"),
    (["--target_layer", "nope"], "has no layer 'nope'"),
    (["--save_label", "../../x"], "--save_label"),
])
def test_bad_settings_stop_before_any_clip(tiny_spec, clips_dir, tmp_path, capsys, extra,
                                           message):
    out = tmp_path / "out"
    code, err = run_main(["--videos_dir", clips_dir, "--out_dir", out, "--vis_method",
                          "grad_cam"] + extra, capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not list(out.rglob("*.png"))


@pytest.mark.parametrize("flags", [["--seed", str(2 ** 64)], ["--noise_level", "nan"],
                                   ["--regression_target", "a,b"],
                                   ["--regression_target", "1,inf"],
                                   ["--rise_p", "0"], ["--vis_method", "grad", "--num_iter", "3"]])
def test_bad_option_values_exit_2_before_work(tiny_spec, clips_dir, tmp_path, capsys, flags):
    method = [] if "--vis_method" in flags else ["--vis_method", {
        "--noise_level": "smooth_grad", "--rise_p": "rise"}.get(flags[0], "grad")]
    with pytest.raises(SystemExit) as stop:
        main.main(["--videos_dir", str(clips_dir), "--out_dir", str(tmp_path / "out"),
                   "--no_gpu", "--quiet"] + method + flags)
    assert stop.value.code == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_out_dir_that_is_a_file_or_under_a_file(tiny_spec, clips_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        code, err = run_main(["--videos_dir", clips_dir, "--out_dir", out], capsys)
        assert code == 2 and "--out_dir" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("content", [b"", b"\x00\x01binary\xff" * 20, b"just some words\n"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_unusable_summary_is_one_line_exit_2(tiny_spec, clips_dir, tmp_path, capsys, content,
                                             overwrite):
    folder = tmp_path / "out" / "grad_cam" / "i3d"
    folder.mkdir(parents=True)
    (folder / "summary.csv").write_bytes(content)
    code, err = run_main(["--videos_dir", clips_dir, "--out_dir", tmp_path / "out"]
                         + (["--overwrite"] if overwrite else []), capsys)
    assert code == 2 and "summary" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_unusable_weights_for_a_demo_model_are_one_short_line(tmp_path, capsys):
    text = tmp_path / "weights.pt"
    text.write_text("not a checkpoint")
    other = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(2, 2)}, other)
    for weights in (text, other):
        code, err = run_main(["--videos_dir", SYNTHETIC, "--out_dir", tmp_path / "out",
                              "--model", "demo_3dcnn", "--weights", weights], capsys)
        assert code == 2 and "Traceback" not in err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and len(lines[0]) < 400 and str(weights) in lines[0]


@pytest.mark.parametrize("method", ["2d_ep", "3d_ep", "step"])
@pytest.mark.parametrize("num_iter", ["1", "2"])
def test_extremal_perturbations_run_with_one_or_two_iterations(tiny_spec, clips_dir, tmp_path,
                                                               capsys, method, num_iter):
    code, err = run_main(["--videos_dir", clips_dir, "--out_dir", tmp_path / "out",
                          "--vis_method", method, "--num_iter", num_iter, "--formats", "npy"],
                         capsys)
    assert code == 0, err
    maps = [np.load(p) for p in (tmp_path / "out").rglob("*.npy")]
    assert len(maps) == 2 and all(np.isfinite(m).all() for m in maps)


def test_occlusion_default_window_and_stride():
    """The defaults as defaults: a quarter of each dimension, stride half of it, the last
    window flush with the end: 7 positions per dimension at 16 x 112 x 112 (343 windows)."""
    from vis_methods import explain
    from vis_methods.occlusion import window_starts

    class Mean(torch.nn.Module):
        def forward(self, clip):
            return clip.mean(dim=(1, 2, 3, 4)).unsqueeze(1).repeat(1, 2)

    clip = torch.rand(1, 3, 16, 112, 112)
    result = explain("occlusion", Mean(), clip, 0, internal_batch_size=64)
    assert result.diagnostics[0]["windows"] == 343
    assert window_starts(16, 4, 2) == [0, 2, 4, 6, 8, 10, 12]
    assert window_starts(112, 28, 14) == [0, 14, 28, 42, 56, 70, 84]
    explicit = explain("occlusion", Mean(), clip, 0, occlusion_window=(4, 28, 28),
                       occlusion_stride=(2, 14, 14), internal_batch_size=64)
    torch.testing.assert_close(result.maps, explicit.maps)


# ---------------------------------------------------- processes: concurrency, SIGTERM, torchrun

def _cli(*args, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return [PYTHON, str(ROOT / "main.py"), *map(str, args), "--no_gpu", "--quiet"], env


def test_two_processes_writing_into_one_folder_lose_no_row(tmp_path):
    halves = [tmp_path / "a", tmp_path / "b"]
    for half in halves:
        half.mkdir()
    for i, clip in enumerate(sorted(SYNTHETIC.iterdir())):
        target = halves[i % 2] / clip.name
        target.symlink_to(clip)
    out = tmp_path / "out"
    procs = []
    for half in halves:
        command, env = _cli("--videos_dir", half, "--out_dir", out, "--model", "demo_3dcnn",
                            "--vis_method", "grad", "--formats", "npy")
        procs.append(subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    summary = assert_outputs_whole(out / "grad" / "demo_3dcnn")
    assert sorted(summary["clip"]) == sorted(p.name for p in SYNTHETIC.iterdir())


def test_sigterm_stops_with_one_line_and_keeps_finished_clips(tmp_path):
    out = tmp_path / "out"
    fast = ["--occlusion_window", "8,56,56"]          # 27 windows: about a second per clip
    command, env = _cli("--videos_dir", SYNTHETIC, "--out_dir", out, "--model", "demo_3dcnn",
                        "--vis_method", "occlusion", "--formats", "npy", *fast)
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    folder = out / "occlusion" / "demo_3dcnn"
    deadline = time.time() + 240
    while time.time() < deadline and not list(folder.glob("*.npy")):
        time.sleep(0.2)
    assert list(folder.glob("*.npy")), "no clip finished in time"
    proc.send_signal(signal.SIGTERM)
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 130
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted:")
    summary = assert_outputs_whole(folder)
    assert len(summary) >= 1 and (summary["status"] == "ok").all()
    # the rerun resumes: finished clips are skipped
    command, env = _cli("--videos_dir", SYNTHETIC, "--out_dir", out, "--model", "demo_3dcnn",
                        "--vis_method", "occlusion", "--formats", "npy", *fast,
                        "--occlusion_fill", "blur")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0
    assert done.stderr.count("skip:") == len(summary)


def test_torchrun_two_processes_equal_one_process(tmp_path):
    torchrun = Path(PYTHON).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed")
    args = ["--videos_dir", SYNTHETIC, "--model", "demo_3dcnn", "--vis_method", "grad_cam",
            "--formats", "npy"]
    command, env = _cli(*args, "--out_dir", tmp_path / "one")
    assert subprocess.run(command, env=env, capture_output=True, timeout=300).returncode == 0
    command, env = _cli(*args, "--out_dir", tmp_path / "two")
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2"] + command[1:]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("(shard 1/2, torchrun)") == 1
    assert result.stderr.count("(shard 2/2, torchrun)") == 1
    one, two = tmp_path / "one" / "grad_cam" / "demo_3dcnn", tmp_path / "two" / "grad_cam" / "demo_3dcnn"
    names = sorted(p.name for p in one.glob("*.npy"))
    assert names == sorted(p.name for p in two.glob("*.npy")) and len(names) == 8
    for name in names:
        np.testing.assert_allclose(np.load(one / name), np.load(two / name), rtol=1e-5, atol=1e-7)
    summary = pd.read_csv(two / "summary.csv")
    assert sorted(summary["clip"]) == sorted(p.name for p in SYNTHETIC.iterdir())


def test_shard_selection_from_flag_torchrun_and_slurm():
    from utils.io.errors import SetupError
    from utils.pipeline.settings import shard_from
    items = list(range(10))
    # --shard counts from 1, as the log does: 2/3 is the second of three shards
    assert shard_from("2/3", {}).select(items) == [1, 4, 7]
    assert shard_from("1/3", {}).select(items) == [0, 3, 6, 9]
    assert shard_from("3/3", {}).select(items) == [2, 5, 8]
    assert shard_from(None, {"WORLD_SIZE": "2", "RANK": "1"}).select(items) == [1, 3, 5, 7, 9]
    slurm = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4",
             "SLURM_ARRAY_TASK_MIN": "4"}
    assert shard_from(None, slurm).select(items) == [1, 5, 9]
    assert shard_from(None, {}).select(items) == items
    for bad in ("4/3", "0/3", "x", "1/0"):
        with pytest.raises(SetupError):
            shard_from(bad, {})
