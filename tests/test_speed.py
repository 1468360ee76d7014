"""The one-clip call's start-up and the writers: the parser and its errors without torch, the
class count checked on the first batch (no probe pass), writer processes writing exactly what
the threads write, in clip order."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

import main
from tests.conftest import ROOT, TINY_CLASSES, TINY_SPEC, write_frames
from utils.pipeline import setup

PYTHON = sys.executable
SYNTHETIC = ROOT / "test_data" / "synthetic"


def _modules_after(code: str) -> set:
    result = subprocess.run([PYTHON, "-c", code + "\nimport sys\n"
                             "print('MODULES', ' '.join(sys.modules))"],
                            cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    return set(result.stdout.strip().splitlines()[-1].split()[1:])


@pytest.mark.parametrize("argv", [["--help"], ["--videos_dir", ".", "--vis_method", "nope"],
                                  ["--videos_dir", ".", "--topk", "0"],
                                  ["--videos_dir", ".", "--vis_method", "grad",
                                   "--cam_pooling", "3d"],
                                  ["--videos_dir", ".", "--model", "no_such_model"]])
def test_help_and_usage_errors_do_not_import_torch(argv):
    code = ("import main\ntry:\n    main.main(%r)\nexcept SystemExit as stop:\n"
            "    assert stop.code in (0, 2), stop.code\nelse:\n    raise AssertionError('ran')"
            % (argv,))
    modules = _modules_after(code)
    assert "main" in modules and "argparse" in modules
    assert not {"torch", "pandas", "matplotlib", "transformers"} & modules


def test_pipeline_imports_no_figures_tables_of_matplotlib_or_hugging_face():
    modules = _modules_after("import main, utils.pipeline.runner, utils.pipeline.stages")
    assert "torch" in modules
    assert "matplotlib" not in modules and "transformers" not in modules


def test_a_one_clip_run_never_imports_matplotlib(tmp_path):
    # the pictures and the explorer page take their colours from utils/render/colour_maps.npz
    clip = SYNTHETIC / sorted(p.name for p in SYNTHETIC.iterdir() if p.is_dir())[0]
    modules = _modules_after(
        f"import main\nassert main.main(['--videos_dir', {str(clip)!r}, '--model', 'demo_3dcnn', "
        f"'--vis_method', 'grad_cam', '--out_dir', {str(tmp_path)!r}, '--no_gpu', '--quiet']) == 0")
    assert "torch" in modules and "pandas" in modules and "matplotlib" not in modules
    assert list(tmp_path.rglob("*.png")) and list(tmp_path.rglob("*.explore.html"))


def test_bundled_colour_tables_are_matplotlibs():
    from utils.render import explorer, figures
    names = figures.COLORMAPS + explorer.EXTRA_MAPS
    with np.load(figures.COLOUR_TABLES_FILE) as bundled:
        assert sorted(bundled.files) == sorted(set(names))   # python -m utils.render.make_colour_tables
        for name in names:
            assert np.array_equal(bundled[name], figures.matplotlib_table(name)), name
    for name in figures.COLORMAPS:
        lut = figures.colour_lut(name)
        assert lut.dtype == np.float32 and not lut.flags.writeable
        assert np.array_equal(lut, figures.matplotlib_table(name).astype(np.float32))


def test_a_map_missing_from_the_bundled_tables_comes_from_matplotlib(monkeypatch, tmp_path):
    from utils.render import figures
    monkeypatch.setattr(figures, "COLOUR_TABLES_FILE", tmp_path / "absent.npz")
    tables = figures.colour_tables_of(["viridis", "gray"])
    assert np.array_equal(tables["gray"], figures.matplotlib_table("gray"))
    assert np.array_equal(tables["viridis"], figures.matplotlib_table("viridis"))


def test_load_model_runs_no_probe_pass(monkeypatch):
    calls = []
    spec = replace(TINY_SPEC, name="demo_3dcnn", load=lambda w, d: _Counting(calls))  # registered: no probe
    adapter = setup.load_model(spec, None, "kinetics", torch.device("cpu"), TINY_CLASSES, None)
    assert calls == []                                  # nothing ran through the network
    adapter(torch.zeros(1, 3, 8, 32, 32))
    assert calls == [1]


class _Counting(torch.nn.Module):
    def __init__(self, calls):
        super().__init__()
        self.calls = calls
        self.net = TINY_SPEC.load(None, "kinetics")

    def forward(self, clip):
        self.calls.append(1)
        return self.net(clip)


def test_checked_outputs_raises_one_line_and_removes_its_hook():
    adapter = TINY_SPEC.adapter(TINY_SPEC.load(None, "kinetics"), TINY_CLASSES + ["extra"])
    with pytest.raises(setup.SetupError) as error:
        with setup.checked_outputs(adapter, adapter.class_names):
            adapter(torch.zeros(1, 3, 8, 32, 32))
    assert str(error.value) == "model tiny has 4 outputs but the class list has 5 names"
    assert not adapter._forward_hooks
    with setup.checked_outputs(adapter, TINY_CLASSES):   # the right count: no complaint
        assert adapter(torch.zeros(2, 3, 8, 32, 32)).shape == (2, 4)
    assert not adapter._forward_hooks


@pytest.mark.parametrize("method", ["grad_cam", "integrated_grad"])   # shared / own forward
def test_wrong_class_count_is_exit_2_before_any_file(method, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(setup, "get_model_spec", lambda name: TINY_SPEC)
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(TINY_CLASSES + ["extra"]) + "\n")
    clips = tmp_path / "clips"
    write_frames(clips / "ironing-aaa", 8, seed=1)
    write_frames(clips / "abseiling-bbb", 8, seed=2)
    out = tmp_path / "out"
    code = main.main(["--videos_dir", str(clips), "--out_dir", str(out), "--vis_method", method,
                      "--classes", str(classes), "--no_gpu", "--quiet"]
                     + (["--num_iter", "2"] if method == "integrated_grad" else []))
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "error: model tiny has 4 outputs but the class list has 5 names"]
    assert not [p for p in out.rglob("*") if p.is_file()]


def _run(out, *extra):
    command = [PYTHON, str(ROOT / "main.py"), "--videos_dir", str(SYNTHETIC), "--out_dir",
               str(out), "--model", "demo_3dcnn", "--vis_method", "grad", "--no_gpu", "--quiet",
               "--formats", "png,gif,npy", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_writer_processes_write_what_the_threads_write_in_clip_order(tmp_path):
    threads, processes = _run(tmp_path / "t", "--writers", "0"), _run(tmp_path / "p", "--writers", "2")
    assert threads.returncode == 0 and processes.returncode == 0, processes.stderr[-2000:]
    a, b = tmp_path / "t" / "grad" / "demo_3dcnn", tmp_path / "p" / "grad" / "demo_3dcnn"
    names = sorted(p.name for p in a.iterdir() if p.suffix in (".png", ".gif", ".npy"))
    assert len(names) == 3 * len(list(SYNTHETIC.iterdir()))
    assert names == sorted(p.name for p in b.iterdir() if p.suffix in (".png", ".gif", ".npy"))
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    rows_a = pd.read_csv(a / "summary.csv").drop(columns=["seconds"])
    rows_b = pd.read_csv(b / "summary.csv").drop(columns=["seconds"])
    pd.testing.assert_frame_equal(rows_a, rows_b)
    assert list(rows_b["clip"]) == sorted(p.name for p in SYNTHETIC.iterdir())
    assert not [p for p in b.iterdir() if p.name.startswith(".")]    # no temporaries left


def test_a_failing_writer_process_fails_its_clip_only(tmp_path):
    # A clip whose pictures cannot be written (its target file's name is taken by a folder)
    # fails on its own line; the other clips are written by the same processes.
    out = tmp_path / "out"
    folder = out / "grad" / "demo_3dcnn"
    first = sorted(p.name for p in SYNTHETIC.iterdir())[0]
    (folder / f"{first}.gif").mkdir(parents=True)
    done = _run(out, "--writers", "2")
    assert done.returncode == 1, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {first}:")
    summary = pd.read_csv(folder / "summary.csv")
    assert summary.set_index("clip")["status"].to_dict() == {
        name: "error" if name == first else "ok" for name in sorted(p.name for p in SYNTHETIC.iterdir())}


FIRST_CLIP = sorted(p.name for p in SYNTHETIC.iterdir())[0]


def _writer_dying_on_the_first_clip(work, job):
    # Stands in for runner.write_in_process inside the writer process (pickled by name).
    from utils.pipeline.runner import write_in_process
    if work.clip.clip_id == FIRST_CLIP:
        os._exit(3)
    return write_in_process(work, job)


def test_a_dead_writer_process_fails_its_clips_and_the_run_goes_on(monkeypatch, tmp_path, capsys):
    from utils.pipeline import runner
    monkeypatch.setattr(runner, "write_in_process", _writer_dying_on_the_first_clip)
    out = tmp_path / "out"
    code = main.main(["--videos_dir", str(SYNTHETIC), "--out_dir", str(out), "--model",
                      "demo_3dcnn", "--vis_method", "grad", "--no_gpu", "--quiet", "--formats",
                      "npy", "--writers", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err[-2000:]
    summary = pd.read_csv(out / "grad" / "demo_3dcnn" / "summary.csv")
    status = summary.set_index("clip")["status"].to_dict()
    assert sorted(status) == sorted(p.name for p in SYNTHETIC.iterdir())
    failed = sorted(c for c, s in status.items() if s == "error")
    # the clip that killed its process and those queued behind it in the same pool fail; the
    # pool is replaced by threads, which write the rest (at most 5 clips are in flight)
    assert FIRST_CLIP in failed and len(failed) <= 5
    errors = sorted(line for line in err.splitlines() if line.startswith("error:"))
    assert errors == sorted(f"error: {c}: {runner.WRITER_DIED}" for c in failed)
    assert "warning: a writer process stopped unexpectedly" in err
    for clip, state in status.items():
        assert (out / "grad" / "demo_3dcnn" / f"{clip}.npy").is_file() == (state == "ok")


def test_default_writers_follow_the_free_cores(monkeypatch):
    from utils.pipeline import runner
    monkeypatch.setattr(runner, "free_cores", lambda: 16)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert runner.default_writers(torch.device("cuda"), 100) == 14
    assert runner.default_writers(torch.device("cpu"), 100) == 14
    assert runner.default_writers(torch.device("cpu"), 5) == 5
    assert runner.default_writers(torch.device("cuda"), 1) == 0       # one clip: threads
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    assert runner.default_writers(torch.device("cpu"), 100) == 0      # the model takes them all
    monkeypatch.setattr(runner, "free_cores", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert runner.default_writers(torch.device("cuda"), 100) == 0


def test_bad_writers_value_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main.main(["--videos_dir", str(tmp_path), "--writers", "-1"])
    assert stop.value.code == 2 and "--writers must be at least 0" in capsys.readouterr().err


def test_npy_loaded_back_equal_under_processes(tmp_path):
    done = _run(tmp_path / "p", "--writers", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    raw = np.load(next((tmp_path / "p" / "grad" / "demo_3dcnn").glob("*.npy")))
    assert raw.dtype == np.float32 and raw.shape == (16, 112, 112)


def test_sigterm_with_writer_processes_keeps_whole_recorded_clips(tmp_path):
    import signal
    import time
    out = tmp_path / "out"
    command = [PYTHON, str(ROOT / "main.py"), "--videos_dir", str(SYNTHETIC), "--out_dir",
               str(out), "--model", "demo_3dcnn", "--vis_method", "occlusion",
               "--occlusion_window", "8,56,56", "--formats", "npy,png", "--writers", "2",
               "--no_gpu", "--quiet"]
    proc = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stderr=subprocess.PIPE, text=True)
    folder = out / "occlusion" / "demo_3dcnn"
    deadline = time.time() + 240
    while time.time() < deadline and not list(folder.glob("*.png")):
        time.sleep(0.2)
    assert list(folder.glob("*.png")), "no clip finished in time"
    proc.send_signal(signal.SIGTERM)
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted:")
    summary = pd.read_csv(folder / "summary.csv")
    assert len(summary) >= 1 and (summary["status"] == "ok").all()
    written = {p.stem for p in folder.glob("*.png")} | {p.stem for p in folder.glob("*.npy")}
    assert written == set(summary["clip"])          # every output has its row, and back
    for clip in summary["clip"]:
        assert np.load(folder / f"{clip}.npy").shape == (16, 112, 112)
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
