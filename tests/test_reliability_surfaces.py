"""Nothing lost, nothing silent on the newer surfaces: user and Hugging Face models, shards,
several methods, odd file names, output folders, interruption. Every case runs the command line
in-process and asserts the exit status, one line on stderr without a traceback, and what was
(or was not) written."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import main
from conftest import ROOT, write_frames
from utils.io.errors import SetupError
from utils.io.paths import name_from_readable, readable_name
from utils.pipeline.settings import shard_from

SYNTHETIC = ROOT / "test_data" / "synthetic"


def run_main(args, capsys):
    code = main.main([str(a) for a in args] + ["--no_gpu", "--quiet"])
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def refused_before_any_clip(code: int, err: str, out: Path, *words: str) -> str:
    """Exit 2, one line holding ``words``, no clip explained or recorded."""
    assert code == 2, err
    line = one_line(err)
    for word in words:
        assert word in line, line
    assert not [p for p in out.rglob("*") if p.suffix in (".png", ".npy", ".gif", ".jsonl")]
    return line


@pytest.fixture
def clips_dir(tmp_path):
    root = tmp_path / "clips"
    write_frames(root / "ironing-aaa", 8, seed=1)
    write_frames(root / "abseiling-bbb", 8, seed=2)
    return root


def builder_file(folder: Path, body: str, name: str = "net.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


TINY_BUILDER = """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)

        def forward(self, clip):
            {forward}

    def build():
        {build}
        torch.manual_seed(0)
        return Net()
"""


def user_model(tmp_path, forward="return self.fc(self.conv(clip).mean(dim=(2, 3, 4)))",
               build="pass") -> str:
    path = builder_file(tmp_path / "user", TINY_BUILDER.format(forward=forward, build=build))
    return f"{path}:build"


USER_FLAGS = ["--crop", "32", "--resize", "32", "--clip_length", "4"]


# ------------------------------------------------------------------ 1. names that are not UTF-8

def test_clip_name_that_is_not_utf8_is_recorded_escaped_and_stops_nothing(tiny_spec, tmp_path,
                                                                         capsys):
    root = tmp_path / "clips"
    good = [f"ironing-{i}" for i in range(8)]
    for i, name in enumerate(good):
        write_frames(root / name, 4, seed=i)
    odd = os.fsdecode(b"clip-\xff")
    write_frames(root / odd, 4, seed=9)
    out = tmp_path / "out"
    args = ["--videos_dir", root, "--out_dir", out, "--vis_method", "grad",
            "--formats", "npy,png"]
    code, err = run_main(args, capsys)
    assert code == 0 and "Traceback" not in err, err
    folder = out / "grad" / "i3d"
    summary = pd.read_csv(folder / "summary.csv", keep_default_na=False, dtype=str)
    assert sorted(summary["clip"]) == sorted(good + ["clip-\\xff"])
    assert (summary["status"] == "ok").all()
    for outputs in summary["outputs"]:
        names = outputs.split(";")
        assert len(names) == 2 and all((folder / n).is_file() for n in names)
    # stored escaped, shown readably, turned back into the name
    assert readable_name(odd) == "clip-\\xff" and name_from_readable("clip-\\xff") == odd
    assert "clip-\\xff" in (folder / "index.html").read_text(encoding="utf-8")
    code, err = run_main(args, capsys)
    assert code == 0 and err.count("skip:") == 9, err


@pytest.mark.parametrize("name", ["plain", "back\\slash", "a\\xff", os.fsdecode(b"\xfe\\x\xff"),
                                  os.fsdecode(b"caf\xc3\xa9 \x80")])
def test_readable_names_round_trip_and_never_collide(name):
    text = readable_name(name)
    text.encode("utf-8")
    assert name_from_readable(text) == name
    assert (text == name) == ("\\" not in text)


def test_summary_cells_with_surrogates_are_written_escaped(tmp_path):
    from utils.io.summary import SummaryStore
    store = SummaryStore(tmp_path)
    store.append([{"clip": "x", "error": "cannot read " + os.fsdecode(b"/a/clip-\xff/f.png")}])
    assert store.rebuild()["error"].tolist() == ["cannot read /a/clip-\\xff/f.png"]


# ---------------------------------------------------------------- 4. Hugging Face folders

def _hf_folder(tmp_path) -> Path:
    from test_transformers import save_tiny
    return save_tiny("videomae", tmp_path / "hf")


def test_hf_corrupt_weights_and_garbage_config_are_one_line_naming_the_file(tmp_path, clips_dir,
                                                                            capsys):
    folder = _hf_folder(tmp_path)
    capsys.readouterr()
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:100])
    out = tmp_path / "out"
    code, err = run_main(["--videos_dir", clips_dir, "--out_dir", out, "--model", f"hf:{folder}"],
                         capsys)
    refused_before_any_clip(code, err, out, str(weights))
    weights.write_bytes(data)
    (folder / "config.json").write_text("{not json")
    code, err = run_main(["--videos_dir", clips_dir, "--out_dir", out, "--model", f"hf:{folder}"],
                         capsys)
    line = refused_before_any_clip(code, err, out, str(folder / "config.json"))
    assert "not found" not in line


# ------------------------------------------------------------- 5, 12, 13. output folders

def _make_read_only(path: Path):
    """A folder that takes no new file, also for root (immutable attribute); None if neither
    way is available here."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return lambda: path.chmod(0o755)
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(path)],
                                                 capture_output=True).returncode == 0:
        return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)
    return None


@pytest.mark.parametrize("which", ["method folder", "summary.parts", "method parent"])
def test_read_only_folder_inside_out_dir_is_one_line_exit_2(tiny_spec, clips_dir, tmp_path,
                                                            capsys, which):
    out = tmp_path / "out"
    folder = out / "grad" / "i3d"
    target = {"method folder": folder, "summary.parts": folder / "summary.parts",
              "method parent": out / "grad"}[which]
    target.mkdir(parents=True)
    undo = _make_read_only(target)
    if undo is None:
        pytest.skip("cannot make a read-only folder here")
    try:
        code, err = run_main(["--videos_dir", clips_dir, "--out_dir", out, "--vis_method", "grad"],
                             capsys)
    finally:
        undo()
    refused_before_any_clip(code, err, out, str(target), "not writable")


def test_save_label_symlink_leading_outside_and_newline_are_refused(tiny_spec, clips_dir,
                                                                    tmp_path, capsys):
    out, outside = tmp_path / "out", tmp_path / "outside"
    folder = out / "grad" / "i3d"
    folder.mkdir(parents=True)
    outside.mkdir()
    (folder / "lnk").symlink_to(outside)
    code, err = run_main(["--videos_dir", clips_dir, "--out_dir", out, "--vis_method", "grad",
                          "--save_label", "lnk"], capsys)
    refused_before_any_clip(code, err, out, "symbolic link")
    assert not list(outside.iterdir())
    code, err = run_main(["--videos_dir", clips_dir, "--out_dir", out, "--vis_method", "grad",
                          "--save_label", "a\nb"], capsys)
    refused_before_any_clip(code, err, out, "--save_label")


@pytest.mark.parametrize("kind", ["directory", "dangling link", "unreadable"])
def test_summary_that_is_not_a_readable_file_is_exit_2(tiny_spec, clips_dir, tmp_path, capsys,
                                                       kind):
    out = tmp_path / "out"
    folder = out / "grad" / "i3d"
    folder.mkdir(parents=True)
    summary = folder / "summary.csv"
    if kind == "directory":
        summary.mkdir()
    elif kind == "dangling link":
        summary.symlink_to(tmp_path / "nowhere")
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads every file")
        summary.write_text("clip,status\n")
        summary.chmod(0)
    code, err = run_main(["--videos_dir", clips_dir, "--out_dir", out, "--vis_method", "grad"],
                         capsys)
    refused_before_any_clip(code, err, out, str(summary))


# ------------------------------------------------------------------ 6, 7. interruption, exit

def test_ctrl_c_while_a_user_model_loads_is_one_line_exit_130(clips_dir, tmp_path, capsys):
    model = user_model(tmp_path, build="raise KeyboardInterrupt")
    code, err = run_main(["--videos_dir", clips_dir, "--out_dir", tmp_path / "out",
                          "--model", model] + USER_FLAGS, capsys)
    assert code == 130 and one_line(err).startswith("interrupted:")


def test_ctrl_c_while_a_hugging_face_model_loads_is_one_line_exit_130(clips_dir, tmp_path,
                                                                      capsys, monkeypatch):
    import models.hf

    def interrupted(_name):
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(models.hf, "load_hf_model", interrupted)
    code, err = run_main(["--videos_dir", clips_dir, "--out_dir", tmp_path / "out",
                          "--model", "hf:somewhere"], capsys)
    assert code == 130 and one_line(err).startswith("interrupted:")


def test_ctrl_c_that_pandas_turns_into_a_parser_error_is_exit_130(tiny_spec, clips_dir, tmp_path,
                                                                  capsys, monkeypatch):
    """pandas' C parser catches the KeyboardInterrupt of the signal handler and raises a
    ParserError instead: the run still sees the interrupt."""
    from utils.io import summary as summary_module
    out = tmp_path / "out"
    folder = out / "grad" / "i3d"
    folder.mkdir(parents=True)
    (folder / "summary.csv").write_text("clip,status\nx,ok\n")

    def read_csv(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            raise pd.errors.ParserError("Error tokenizing data. C error: interrupted") from None

    monkeypatch.setattr(summary_module.pd, "read_csv", read_csv)
    code, err = run_main(["--videos_dir", clips_dir, "--out_dir", out, "--vis_method", "grad"],
                         capsys)
    assert code == 130 and one_line(err).startswith("interrupted:")


def test_handlers_are_restored_after_a_run(tiny_spec, clips_dir, tmp_path, capsys):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    run_main(["--videos_dir", clips_dir, "--out_dir", tmp_path / "out", "--vis_method", "grad",
              "--formats", "npy"], capsys)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.parametrize("where", ["builder", "import"])
def test_builder_raising_system_exit_0_is_exit_2(clips_dir, tmp_path, capsys, where):
    if where == "builder":
        model = user_model(tmp_path, build="raise SystemExit(0)")
    else:
        path = builder_file(tmp_path / "user", "import sys\nsys.exit(0)\n")
        model = f"{path}:build"
    out = tmp_path / "out"
    code, err = run_main(["--videos_dir", clips_dir, "--out_dir", out, "--model", model]
                         + USER_FLAGS, capsys)
    refused_before_any_clip(code, err, out, "SystemExit")


# ------------------------------------------------------------------------ 8. shards

@pytest.mark.parametrize("environ, word", [
    ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK=5"), ({"WORLD_SIZE": "2", "RANK": "-1"}, "RANK=-1"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2"), ({"WORLD_SIZE": "abc"}, "WORLD_SIZE"),
    ({"WORLD_SIZE": "2", "RANK": "x"}, "RANK"), ({"WORLD_SIZE": "0"}, "WORLD_SIZE"),
    ({"SLURM_ARRAY_TASK_ID": "a", "SLURM_ARRAY_TASK_COUNT": "4"}, "SLURM_ARRAY_TASK_ID"),
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "0"}, "SLURM"),
])
def test_bad_launcher_variables_are_refused_naming_them(environ, word):
    with pytest.raises(SetupError, match=word):
        shard_from(None, environ)


def test_rank_outside_world_size_through_the_cli(tiny_spec, clips_dir, tmp_path, capsys,
                                                 monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    out = tmp_path / "out"
    code, err = run_main(["--videos_dir", clips_dir, "--out_dir", out], capsys)
    refused_before_any_clip(code, err, out, "RANK=5", "0..1")


# ------------------------------------------------------- 9. failures that hit every clip

@pytest.mark.parametrize("forward, words", [
    ("raise RuntimeError('broken forward')", ["fails on", "broken forward"]),
    ("raise SystemExit(0)", ["fails on", "SystemExit"]),
    ("return self.fc(self.conv(clip).mean(dim=(2, 3, 4))).unsqueeze(1)", ["(1, 1, 3)"]),
    ("return self.fc(self.conv(clip).mean(dim=(2, 3, 4))).long()", ["torch.int64"]),
])
def test_user_model_that_fails_every_clip_is_refused_before_the_first(clips_dir, tmp_path,
                                                                      capsys, forward, words):
    out = tmp_path / "out"
    code, err = run_main(["--videos_dir", clips_dir, "--out_dir", out, "--vis_method", "grad",
                          "--model", user_model(tmp_path, forward=forward)] + USER_FLAGS, capsys)
    refused_before_any_clip(code, err, out, *words)


@pytest.mark.parametrize("flags, words", [
    (["--vis_method", "attention_rollout"], ["attention_rollout", "attention"]),
    (["--vis_method", "temporal_sensitivity", "--segments", "9"], ["--segments 9", "8 frames"]),
    (["--regression_target", "1,2"], ["--regression_target", "classification"]),
])
def test_settings_that_fail_every_clip_are_refused_before_the_first(tiny_spec, clips_dir,
                                                                    tmp_path, capsys, flags,
                                                                    words):
    out = tmp_path / "out"
    code, err = run_main(["--videos_dir", clips_dir, "--out_dir", out] + flags, capsys)
    refused_before_any_clip(code, err, out, *words)


def test_attention_method_on_a_transformer_is_not_refused(tmp_path, capsys):
    root = tmp_path / "clips"
    root.mkdir()
    for clip in sorted(SYNTHETIC.iterdir())[:2]:
        (root / clip.name).symlink_to(clip)
    code, err = run_main(["--videos_dir", root, "--out_dir", tmp_path / "out", "--model",
                          "demo_transformer", "--vis_method", "attention_rollout", "--formats",
                          "npy"], capsys)
    assert code == 0, err
    assert len(list((tmp_path / "out").rglob("*.npy"))) == 2


def test_regression_target_of_the_wrong_length_is_refused_before_the_first_clip(tmp_path,
                                                                                 capsys):
    out = tmp_path / "out"
    code, err = run_main(["--videos_dir", SYNTHETIC, "--out_dir", out, "--model",
                          "demo_regression", "--vis_method", "grad", "--regression_target",
                          "1,2,3"], capsys)
    refused_before_any_clip(code, err, out, "3 values", "outputs 2")


# ------------------------------------------------------ 10. several methods, one failing

@pytest.mark.parametrize("stage", ["compute", "finish"])
@pytest.mark.parametrize("batch", ["1", "2"])
def test_one_failing_method_fails_alone(tiny_spec, clips_dir, tmp_path, capsys, monkeypatch,
                                        stage, batch):
    from utils.pipeline import stages
    if stage == "compute":
        real = stages.explain

        def explain(method, *args, **kwargs):
            if method == "grad_cam":
                raise RuntimeError("grad_cam broke")
            return real(method, *args, **kwargs)
        monkeypatch.setattr(stages, "explain", explain)
    else:
        real_render = stages.render_outputs

        def render_outputs(folder, *args, **kwargs):
            if folder.parent.name == "grad_cam":
                raise RuntimeError("grad_cam broke")
            return real_render(folder, *args, **kwargs)
        monkeypatch.setattr(stages, "render_outputs", render_outputs)
    out = tmp_path / "out"
    code, err = run_main(["--videos_dir", clips_dir, "--out_dir", out, "--vis_method",
                          "grad,grad_cam,grad*input", "--formats", "npy,png",
                          "--batch_size", batch], capsys)
    assert code == 1 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and all("grad_cam: grad_cam broke" in line for line in errors)
    for method in ("grad", "grad_x_input"):
        folder = out / method / "i3d"
        summary = pd.read_csv(folder / "summary.csv", keep_default_na=False, dtype=str)
        assert sorted(summary["clip"]) == ["abseiling-bbb", "ironing-aaa"]
        assert (summary["status"] == "ok").all()
        assert len(list(folder.glob("*.npy"))) == 2 and len(list(folder.glob("*.png"))) == 2
    failed = out / "grad_cam" / "i3d"
    summary = pd.read_csv(failed / "summary.csv", keep_default_na=False, dtype=str)
    assert (summary["status"] == "error").all() and len(summary) == 2
    assert not list(failed.glob("*.npy")) and not list(failed.glob("*.png"))
    # the maps of the methods that worked equal those of a run of that method alone
    alone = tmp_path / "alone"
    code, err = run_main(["--videos_dir", clips_dir, "--out_dir", alone, "--vis_method", "grad",
                          "--formats", "npy"], capsys)
    assert code == 0, err
    for name in ("abseiling-bbb.npy", "ironing-aaa.npy"):
        np.testing.assert_allclose(np.load(out / "grad" / "i3d" / name),
                                   np.load(alone / "grad" / "i3d" / name), rtol=1e-5, atol=1e-9)


# ------------------------------------------------------------------ 11. clip length

def test_clip_length_that_cannot_fit_is_refused_before_any_clip(tiny_spec, clips_dir, tmp_path,
                                                                capsys, monkeypatch):
    out = tmp_path / "out"
    code, err = run_main(["--videos_dir", clips_dir, "--out_dir", out, "--clip_length",
                          "100000"], capsys)
    refused_before_any_clip(code, err, out, "--clip_length 100000", "GiB", "frames fit")
    from utils.pipeline import setup
    # 3 x 64 x 32 x 32 values: x 40 bytes = 7.5 MiB without pictures, x 240 = 45 MiB with them
    # (20 MiB / (3 x 32 x 32 x 240 bytes) = 28 frames)
    monkeypatch.setattr(setup, "available_memory", lambda: 20 * 2 ** 20)
    code, err = run_main(["--videos_dir", clips_dir, "--out_dir", out, "--clip_length", "64"],
                         capsys)
    refused_before_any_clip(code, err, out, "at most about 28 frames")
    code, err = run_main(["--videos_dir", clips_dir, "--out_dir", out, "--clip_length", "64",
                          "--formats", "npy", "--vis_method", "grad"], capsys)
    assert code == 0, err


# ------------------------------------------------------------------ 14. weights files

@pytest.mark.parametrize("model", ["demo_3dcnn", "r3d", "i3d"])
@pytest.mark.parametrize("content", ["text", "pickled module", "folder", "empty"])
def test_unusable_weights_are_one_short_line_naming_the_file(tmp_path, capsys, model, content):
    weights = tmp_path / "weights.pt"
    if content == "text":
        weights.write_text("definitely not a checkpoint\n")
    elif content == "pickled module":
        torch.save(torch.nn.Linear(2, 2), weights)
    elif content == "folder":
        weights.mkdir()
    else:
        weights.write_bytes(b"")
    out = tmp_path / "out"
    code, err = run_main(["--videos_dir", SYNTHETIC, "--out_dir", out, "--model", model,
                          "--weights", weights, "--vis_method", "grad"], capsys)
    line = refused_before_any_clip(code, err, out, str(weights))
    assert len(line) < 300 and "Weights only load failed" not in line
    expected = {"text": "not a PyTorch checkpoint (it holds a text file)",
                "pickled module": "not a tensor-only checkpoint", "folder": "is a folder",
                "empty": "is empty"}[content]
    assert expected in line, line


# ------------------------------------------------------------- 15. no abbreviations

@pytest.mark.parametrize("flags", [["--score_step", "3"], ["--vis", "grad"],
                                   ["--over"], ["--clip_len", "4"]])
def test_abbreviated_flags_are_refused(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as stop:
        main.main(["--videos_dir", str(tmp_path), "--out_dir", str(tmp_path / "out")] + flags)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert flags[0] in err and "Traceback" not in err and "invalid int" not in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------- 16. folders as files, imports

def test_folder_given_as_builder_file_is_named_a_folder(clips_dir, tmp_path, capsys):
    folder = tmp_path / "models"
    folder.mkdir()
    out = tmp_path / "out"
    code, err = run_main(["--videos_dir", clips_dir, "--out_dir", out, "--model",
                          f"{folder}:build"], capsys)
    line = refused_before_any_clip(code, err, out, "is a folder")
    assert "does not exist" not in line


def test_builder_imports_a_module_beside_it(clips_dir, tmp_path, capsys):
    import sys
    folder = tmp_path / "mine"
    builder_file(folder, "SIZE = 3\n", name="helper_beside_builder.py")
    path = builder_file(folder, """
        from torch import nn
        import helper_beside_builder

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv3d(3, 4, 3, padding=1)
                self.fc = nn.Linear(4, helper_beside_builder.SIZE)

            def forward(self, clip):
                return self.fc(self.conv(clip).mean(dim=(2, 3, 4)))

        def build():
            return Net()
    """)
    path_before = list(sys.path)
    try:
        code, err = run_main(["--videos_dir", clips_dir, "--out_dir", tmp_path / "out", "--model",
                              f"{path}:build", "--vis_method", "grad", "--formats", "npy"]
                             + USER_FLAGS, capsys)
    finally:
        sys.modules.pop("helper_beside_builder", None)
    assert code == 0, err
    assert sys.path == path_before
    assert len(list((tmp_path / "out").rglob("*.npy"))) == 2


# ------------------------------------------------------------------ decide and document

def test_formula_like_clip_names_read_back_exactly(tiny_spec, tmp_path, capsys):
    """Cells are written as they are (see the README: a prefix would change what pandas and
    scripts read, and negative numbers start with '-'); the names come back exactly."""
    root = tmp_path / "clips"
    names = ["=1+1", "+cmd", "-2", "@sum(a1)"]
    for i, name in enumerate(names):
        write_frames(root / name, 4, seed=i)
    out = tmp_path / "out"
    code, err = run_main(["--videos_dir", root, "--out_dir", out, "--vis_method", "grad",
                          "--formats", "npy"], capsys)
    assert code == 0, err
    summary = pd.read_csv(out / "grad" / "i3d" / "summary.csv", keep_default_na=False,
                          dtype=str)
    assert sorted(summary["clip"]) == sorted(names)


def test_resume_checks_rows_fingerprint_and_existence_not_contents(tiny_spec, clips_dir,
                                                                   tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--videos_dir", clips_dir, "--out_dir", out, "--vis_method", "grad", "--formats",
            "npy"]
    assert run_main(args, capsys)[0] == 0
    npy = out / "grad" / "i3d" / "ironing-aaa.npy"
    npy.write_bytes(npy.read_bytes()[:10])                # truncated by hand: still skipped
    code, err = run_main(args, capsys)
    assert code == 0 and "skip: ironing-aaa" in err
    npy.unlink()                                          # missing: redone
    code, err = run_main(args, capsys)
    assert code == 0 and "skip: ironing-aaa" not in err and "skip: abseiling-bbb" in err
    assert np.load(npy).shape[0] == 8


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_while_the_libraries_load_is_one_line_exit_130(tmp_path, signal_number):
    import sys
    import time
    command = [sys.executable, str(ROOT / "main.py"), "--videos_dir", str(SYNTHETIC),
               "--out_dir", str(tmp_path / "out"), "--model", "demo_3dcnn", "--no_gpu", "--quiet"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    time.sleep(0.4)                   # importing torch takes seconds: the signal lands there
    proc.send_signal(signal_number)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and one_line(err).startswith("interrupted:")
