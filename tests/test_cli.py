"""main.py end to end on a tiny model: outputs, batches with bad clips, resuming, targets,
and the offline missing-weights message."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import main
from tests.conftest import ROOT, TINY_CLASSES, TINY_SPEC, write_frames
from utils.pipeline import setup  # noqa: E402


def run_main(args, capsys):
    code = main.main([str(a) for a in args] + ["--no_gpu", "--quiet"])
    captured = capsys.readouterr()
    return code, captured.err


@pytest.fixture
def clips_dir(tmp_path):
    root = tmp_path / "clips"
    write_frames(root / "ironing-aaa", 10, seed=1)
    write_frames(root / "playing bass guitar-bbb", 8, seed=2, ext=".jpg")
    return root


def test_outputs_layout_and_contents(tiny_spec, clips_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_main(["--videos_dir", clips_dir, "--out_dir", out, "--vis_method", "grad",
                          "--save_label", "run1", "--polarity", "both"], capsys)
    assert code == 0, err
    folder = out / "grad" / "demo_3dcnn"  # default --model is i3d; tests pass none -> i3d name
    folder = out / "grad" / "i3d" / "run1"
    for clip in ("ironing-aaa", "playing bass guitar-bbb"):
        raw = np.load(folder / f"{clip}_both.npy")
        assert raw.dtype == np.float32 and raw.shape == (8, 32, 32)
        assert (raw < 0).any() and (raw > 0).any()          # 'both' keeps negative evidence
        with Image.open(folder / f"{clip}_both.gif") as gif:
            assert gif.n_frames == 8
        with Image.open(folder / f"{clip}_both.png") as png:
            assert png.width > 800
    summary = pd.read_csv(folder / "summary.csv")
    assert list(summary.columns[:11]) == ["clip", "output_set", "label", "prediction",
                                          "probability", "target", "method", "model", "seconds",
                                          "status", "error"]
    assert summary["status"].tolist() == ["ok", "ok"]
    assert summary["label"].tolist() == ["ironing", "playing bass guitar"]
    assert summary["target"].tolist() == ["ironing", "playing bass guitar"]   # default: the label
    shares = np.array([float(v) for v in summary["frame_importance"][0].split(";")])
    assert shares.shape == (8,) and shares.sum() == pytest.approx(1.0, abs=1e-3)
    # the raw map is the signed channel sum of the gradient, before any display scaling
    from vis_methods.gradient import grad
    from utils.io.clips import ClipSource, load_frames, preprocess
    frames, _ = load_frames(ClipSource(clips_dir / "ironing-aaa", False), 8, resize=32)
    clip = TINY_SPEC.normalize(preprocess(frames, 32, 32)).unsqueeze(0)
    expected = grad(TINY_SPEC.load(None, "kinetics"), clip, torch.tensor([1]))[0].sum(0)
    np.testing.assert_allclose(np.load(folder / "ironing-aaa_both.npy"), expected.numpy(),
                               rtol=1e-4, atol=1e-7)


def test_bad_clips_are_reported_and_others_still_run(tiny_spec, tmp_path, capsys):
    root = tmp_path / "clips"
    (root / "abseiling-empty").mkdir(parents=True)
    write_frames(root / "ironing-corrupt", 4)
    (root / "ironing-corrupt" / "frame2.png").write_bytes(b"\x89PNG broken")
    write_frames(root / "ironing-good", 8)
    out = tmp_path / "out"
    code, err = run_main(["--videos_dir", root, "--out_dir", out, "--vis_method", "grad"], capsys)
    assert code == 1
    folder = out / "grad" / "i3d"
    assert (folder / "ironing-good.png").is_file() and (folder / "ironing-good.npy").is_file()
    assert not list(folder.glob("abseiling-empty*")) and not list(folder.glob("ironing-corrupt*"))
    assert not list(folder.glob(".*"))                                   # no temporary files left
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 2
    assert any("abseiling-empty" in line and "no frames" in line for line in error_lines)
    assert any("ironing-corrupt" in line and "frame2.png" in line for line in error_lines)
    summary = pd.read_csv(folder / "summary.csv", keep_default_na=False).set_index("clip")
    assert summary.loc["ironing-good", "status"] == "ok"
    assert summary.loc["abseiling-empty", "status"] == "error"
    assert "frame2.png" in summary.loc["ironing-corrupt", "error"]


def test_rerun_without_overwrite_does_no_work(monkeypatch, clips_dir, tmp_path, capsys):
    loads = []

    def counting_load(weights, dataset):
        loads.append(1)
        return TINY_SPEC.load(weights, dataset)

    from dataclasses import replace
    monkeypatch.setattr(setup, "get_model_spec", lambda name: replace(TINY_SPEC, load=counting_load))
    out = tmp_path / "out"
    args = ["--videos_dir", clips_dir, "--out_dir", out, "--vis_method", "grad"]
    assert run_main(args, capsys)[0] == 0
    assert len(loads) == 1
    png = out / "grad" / "i3d" / "ironing-aaa.png"
    stamp = png.stat().st_mtime_ns
    code, err = run_main(args, capsys)
    assert code == 0 and len(loads) == 1                     # model not even loaded
    assert png.stat().st_mtime_ns == stamp and err.count("skip:") == 2
    png.unlink()                                             # a missing output is redone
    assert run_main(args, capsys)[0] == 0 and png.is_file() and len(loads) == 2
    stamp = png.stat().st_mtime_ns
    assert run_main(args + ["--overwrite"], capsys)[0] == 0
    assert png.stat().st_mtime_ns != stamp


def test_targets_pred_class_topk_and_unknown_label(tiny_spec, tmp_path, capsys):
    root = tmp_path / "clips"
    write_frames(root / "juggling-xyz", 8)                   # label not among the classes
    out = tmp_path / "out"
    code, err = run_main(["--videos_dir", root, "--out_dir", out, "--vis_method", "grad",
                          "--formats", "npy"], capsys)
    assert code == 0 and "label unknown, explaining the prediction" in err
    summary = pd.read_csv(out / "grad" / "i3d" / "summary.csv")
    assert summary["target"][0] == summary["prediction"][0]
    code, _ = run_main(["--videos_dir", root, "--out_dir", out, "--vis_method", "grad",
                        "--formats", "npy", "--target", "playing guitar", "--save_label", "c"], capsys)
    assert code == 0 and (out / "grad" / "i3d" / "c" / "juggling-xyz_playing_guitar.npy").is_file()
    code, _ = run_main(["--videos_dir", root, "--out_dir", out, "--vis_method", "grad",
                        "--formats", "npy", "--topk", "3", "--save_label", "k"], capsys)
    summary = pd.read_csv(out / "grad" / "i3d" / "k" / "summary.csv")
    assert code == 0 and len(summary) == 3 and summary["target"].nunique() == 3
    assert len(list((out / "grad" / "i3d" / "k").glob("juggling-xyz_top*.npy"))) == 3
    # a counterfactual is the negated map
    code, _ = run_main(["--videos_dir", root, "--out_dir", out, "--vis_method", "grad",
                        "--formats", "npy", "--target", "playing guitar", "--counterfactual",
                        "--save_label", "c"], capsys)
    plain = np.load(out / "grad" / "i3d" / "c" / "juggling-xyz_playing_guitar.npy")
    counter = np.load(out / "grad" / "i3d" / "c" / "juggling-xyz_playing_guitar_counterfactual.npy")
    np.testing.assert_allclose(counter, -plain, rtol=1e-5, atol=1e-8)
    code, err = run_main(["--videos_dir", root, "--out_dir", out, "--vis_method", "grad",
                          "--target", "no such class", "--save_label", "bad"], capsys)
    # An unknown class is refused before any clip is read (exit 2, one line).
    assert code == 2 and "unknown class 'no such class'" in err
    assert not (out / "grad" / "i3d" / "bad").exists()


def test_failed_render_leaves_no_partial_file(tiny_spec, clips_dir, tmp_path, capsys, monkeypatch):
    from utils.render import figures as visualize

    def broken(*args, **kwargs):
        raise RuntimeError("renderer exploded")

    monkeypatch.setattr(visualize, "animation", broken)
    out = tmp_path / "out"
    code, err = run_main(["--videos_dir", clips_dir / "ironing-aaa", "--out_dir", out,
                          "--vis_method", "grad"], capsys)
    assert code == 1 and "renderer exploded" in err
    folder = out / "grad" / "i3d"
    assert not list(folder.glob("*.gif")) and not list(folder.glob(".*"))
    assert pd.read_csv(folder / "summary.csv")["status"].tolist() == ["error"]


def test_device_note_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert setup.choose_device(no_gpu=False).type == "cpu"
    assert "CUDA is not available" in capsys.readouterr().err
    assert setup.choose_device(no_gpu=True).type == "cpu"


def test_the_layer_the_run_settings_ask_for_is_checked_when_the_model_loads(tmp_path):
    from utils.io.errors import SetupError
    from utils.pipeline.settings import RunSettings

    def settings(layer):
        return RunSettings(methods=("grad_cam",), model_name="tiny", out_dir=tmp_path,
                           target_layer=layer)

    cpu = torch.device("cpu")
    setup.load_model(TINY_SPEC, None, "x", cpu, TINY_CLASSES, settings=settings("features.0"))
    with pytest.raises(SetupError, match="--target_layer"):
        setup.load_model(TINY_SPEC, None, "x", cpu, TINY_CLASSES, settings=settings("nope"))
    # the fingerprint holds the layer through model_identity, as before the field
    assert settings("features.0").fingerprint("grad_cam") == settings(None).fingerprint("grad_cam")


def test_the_command_hands_its_layer_to_the_model_in_the_run_settings(tiny_spec, clips_dir,
                                                                      tmp_path, capsys,
                                                                      monkeypatch):
    seen = []
    real = setup.load_model

    def recording(*args, settings=None, **kwargs):
        seen.append((settings.target_layer, args[5:], kwargs))
        return real(*args, settings=settings, **kwargs)

    monkeypatch.setattr(setup, "load_model", recording)
    code, err = run_main(["--videos_dir", clips_dir, "--out_dir", tmp_path / "out",
                          "--vis_method", "grad_cam", "--target_layer", "features.0",
                          "--formats", "npy"], capsys)
    assert code == 0, err
    assert seen == [("features.0", (), {})]     # one path: the settings, no loose argument


def test_processes_beyond_the_gpu_count_share_the_gpus(monkeypatch):
    """torchrun with more processes than GPUs: LOCAL_RANK modulo the GPU count."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for rank, index in (("0", 0), ("1", 1), ("2", 0), ("5", 1)):
        monkeypatch.setenv("LOCAL_RANK", rank)
        assert setup.choose_device(no_gpu=False) == torch.device("cuda", index)
    monkeypatch.delenv("LOCAL_RANK")
    assert setup.choose_device(no_gpu=False) == torch.device("cuda", 0)


def test_help_lists_choices():
    text = main.build_parser().format_help()
    for word in ("--videos_dir", "grad_cam", "step", "i3d", "r2plus1d", "--weights", "--formats",
                 "--overwrite", "--topk", "--regression_target", "--perturb_area"):
        assert word in text


def _subprocess_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_HOME",)}
    env.update(TORCH_HOME=str(tmp_path / "torch_home"), VIDEOVISUAL_OFFLINE="1")
    return env


def test_missing_torchvision_weights_offline_message(tmp_path):
    root = tmp_path / "clips"
    write_frames(root / "ironing-aaa", 4)
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "--videos_dir", str(root),
                             "--model", "r2plus1d", "--no_gpu", "--out_dir", str(tmp_path / "o")],
                            capture_output=True, text=True, env=_subprocess_env(tmp_path), timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    line = error_lines[0]
    assert "r2plus1d_18-91a641e6.pth" in line and str(tmp_path / "torch_home") in line
    assert "--weights" in line


def test_torchvision_weights_from_file_and_from_cache(tmp_path, monkeypatch):
    from models import get_model_spec
    from models.registry import WeightsUnavailableError
    from torchvision.models.video import s3d

    spec = get_model_spec("s3d")
    torch.manual_seed(3)
    reference = s3d()
    weights = tmp_path / "my_s3d.pt"
    torch.save(reference.state_dict(), weights)
    loaded = spec.load(weights, "kinetics")
    assert torch.equal(loaded.classifier[1].weight, reference.classifier[1].weight)
    assert not loaded.training
    # the torchvision cache is used when the file is there, with no download attempt
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("VIDEOVISUAL_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="s3d-d76dad2f.pth"):
        spec.load(None, "kinetics")
    cache = tmp_path / "th" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    os.link(weights, cache / "s3d-d76dad2f.pth")
    from_cache = spec.load(None, "kinetics")
    assert torch.equal(from_cache.classifier[1].weight, reference.classifier[1].weight)
    # a state dict for another architecture is refused with a clear message
    torch.save({"weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(WeightsUnavailableError, match="does not fit this model"):
        spec.load(tmp_path / "wrong.pt", "kinetics")


def test_grad_cam_two_clips_in_one_run_equal_each_alone(tiny_spec, clips_dir, tmp_path, capsys):
    together, alone = tmp_path / "together", tmp_path / "alone"
    assert run_main(["--videos_dir", clips_dir, "--out_dir", together, "--vis_method", "grad_cam",
                     "--formats", "npy"], capsys)[0] == 0
    for clip in ("ironing-aaa", "playing bass guitar-bbb"):
        assert run_main(["--videos_dir", clips_dir / clip, "--out_dir", alone / clip,
                         "--vis_method", "grad_cam", "--formats", "npy"], capsys)[0] == 0
        joint = np.load(together / "grad_cam" / "i3d" / f"{clip}.npy")
        single = np.load(alone / clip / "grad_cam" / "i3d" / f"{clip}.npy")
        assert joint.max() > 0
        np.testing.assert_allclose(joint, single, rtol=1e-5, atol=1e-7)
    first = np.load(together / "grad_cam" / "i3d" / "ironing-aaa.npy")
    second = np.load(together / "grad_cam" / "i3d" / "playing bass guitar-bbb.npy")
    assert not np.allclose(first, second)


SYNTHETIC = ROOT / "test_data" / "synthetic"


def test_demo_regression_rows_show_truth_and_predicted_vectors(tmp_path, capsys):
    """A regression model is explained for -loss(output, truth), its truth read from the clip's
    sidecar; the row names both vectors, and the map is the gradient of that loss."""
    import json
    from models import get_model_spec
    from utils.io.clips import ClipSource, load_frames, preprocess
    from vis_methods.targets import RegressionTarget
    clip_dir = SYNTHETIC / "circle moving down-s7_00003"
    out = tmp_path / "out"
    code, err = run_main(["--videos_dir", clip_dir, "--out_dir", out, "--model", "demo_regression",
                          "--vis_method", "grad", "--regression_target", "sidecar",
                          "--formats", "npy"], capsys)
    assert code == 0, err
    row = pd.read_csv(out / "grad" / "demo_regression" / "summary.csv").iloc[0]
    truth = json.loads((clip_dir / "ground_truth.json").read_text())["regression_target"]
    assert row["label"] == "(" + ", ".join(f"{v:.2f}" for v in truth) + ")"
    spec = get_model_spec("demo_regression")
    model = spec.load(None, "synthetic")
    frames, _ = load_frames(ClipSource(clip_dir, False), spec.clip_length)
    clip = spec.normalize(preprocess(frames, spec.resize, spec.crop)).unsqueeze(0)
    with torch.no_grad():
        predicted = model(clip)[0]
    assert row["prediction"] == "(" + ", ".join(f"{float(v):.2f}" for v in predicted) + ")"
    assert row["target"] == "-loss(output, truth)"
    clip.requires_grad_(True)
    RegressionTarget(torch.tensor(truth))(model(clip)).sum().backward()
    saved = np.load(out / "grad" / "demo_regression" / "circle moving down-s7_00003.npy")
    np.testing.assert_allclose(saved, clip.grad[0].sum(0).numpy(), rtol=1e-4, atol=1e-7)


def test_regression_model_without_truth_is_a_clip_error(tmp_path, capsys):
    code, err = run_main(["--videos_dir", SYNTHETIC / "circle moving down-s7_00003", "--out_dir",
                          tmp_path, "--model", "demo_regression", "--vis_method", "grad"], capsys)
    assert code == 1 and "--regression_target" in err


def test_attention_model_writes_its_attention_per_frame(tmp_path, capsys):
    from models import get_model_spec
    from utils.io.clips import ClipSource, load_frames, preprocess
    clip_dir = SYNTHETIC / "circle moving left-s7_00004"
    code, err = run_main(["--videos_dir", clip_dir, "--out_dir", tmp_path, "--model",
                          "demo_lstm_attn", "--vis_method", "grad_cam", "--formats", "png"], capsys)
    assert code == 0, err
    row = pd.read_csv(tmp_path / "grad_cam" / "demo_lstm_attn" / "summary.csv").iloc[0]
    written = np.array([float(v) for v in row["attention"].split(";")])
    spec = get_model_spec("demo_lstm_attn")
    model = spec.load(None, "synthetic")
    frames, _ = load_frames(ClipSource(clip_dir, False), spec.clip_length)
    clip = spec.normalize(preprocess(frames, spec.resize, spec.crop)).unsqueeze(0)
    with torch.no_grad():
        expected = model.temporal_attention(clip)[0].numpy()
    np.testing.assert_allclose(written, expected, atol=1e-4)
    assert row["label"] == row["prediction"] == "circle moving left"


@pytest.mark.parametrize("flags", [["--perturb_area", "0.1", "1.5"], ["--rise_p", "0"],
                                   ["--num_iter", "0"], ["--noise_level", "-1"],
                                   ["--ep_optimizer", "sgd"]])
def test_bad_option_values_stop_before_any_work(flags, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main.main(["--videos_dir", str(tmp_path), "--out_dir", str(tmp_path / "out")] + flags)
    assert stop.value.code == 2
    assert flags[0] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_rise_keep_probability_reaches_the_method(tiny_spec, clips_dir, tmp_path, capsys):
    """--rise_p changes the masks RISE draws: the saved map is RISE's own with that p."""
    from vis_methods.occlusion import rise
    from utils.io.clips import ClipSource, load_frames, preprocess
    out = tmp_path / "out"
    code, err = run_main(["--videos_dir", clips_dir / "ironing-aaa", "--out_dir", out,
                          "--vis_method", "rise", "--rise_p", "0.3", "--num_iter", "40",
                          "--formats", "npy"], capsys)
    assert code == 0, err
    saved = np.load(out / "rise" / "i3d" / "ironing-aaa.npy")
    model = TINY_SPEC.load(None, "kinetics")
    frames, _ = load_frames(ClipSource(clips_dir / "ironing-aaa", False), 8, resize=32)
    clip = TINY_SPEC.normalize(preprocess(frames, 32, 32)).unsqueeze(0)
    kw = dict(num_iter=40, rise_baseline=TINY_SPEC.black_clip(clip), seed=0)
    target = torch.tensor([TINY_SPEC.class_names("kinetics").index("ironing")])
    np.testing.assert_allclose(saved, rise(model, clip, target, rise_p=0.3, **kw)[0, 0].numpy(),
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(saved, rise(model, clip, target, rise_p=0.5, **kw)[0, 0].numpy())


def test_the_command_exits_with_its_code_after_threads_and_exit_handlers(tmp_path):
    # cli() ends the process without the interpreter's teardown; what comes before that
    # teardown must still happen: a non-daemon thread finishes, atexit handlers run, the
    # buffered stdout reaches the pipe, and main()'s code is the exit status.
    script = (
        "import atexit, sys, threading, time\n"
        "from pathlib import Path\n"
        "import main\n"
        f"out = Path({str(tmp_path)!r})\n"
        "def late():\n"
        "    time.sleep(0.3)\n"
        "    (out / 'thread').write_text('done')\n"
        "def handler():\n"
        "    (out / 'atexit').write_text(str((out / 'thread').exists()))\n"
        "atexit.register(handler)\n"
        "main.main = lambda argv=None: (threading.Thread(target=late).start(),\n"
        "                               sys.stdout.write('buffered' * 1000), 3)[-1]\n"
        "main.cli()\n"
        "(out / 'after').write_text('cli returned')\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 3, result.stderr[-2000:]
    assert result.stdout == "buffered" * 1000
    assert (tmp_path / "thread").read_text() == "done"
    assert (tmp_path / "atexit").read_text() == "True"     # after the thread was joined
    assert not (tmp_path / "after").exists()
