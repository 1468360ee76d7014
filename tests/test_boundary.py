"""The model/method boundary: model adapters (layouts, layer readers, baselines), the one
method context, declared options, the attribution result and the resume fingerprint."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.video import mvit as tv_mvit
from torchvision.models.video.swin_transformer import SwinTransformer3d

import main
from conftest import TINY_SPEC, TinyVideoNet, write_frames
from models.adapter import (ModelAdapter, as_adapter, read_channels_last, read_conv_layer,
                            tokens_to_grid)
from utils.pipeline.settings import RunSettings
from utils.io.paths import clip_ids
from utils.io.clips import ClipSource
from vis_methods import METHODS, OptionError, check_options, explain, methods_taking
from vis_methods.cam import grad_cam, grad_cam_pp, layer_cam, score_cam
from vis_methods.gradient import integrated_grad


def run_main(args, capsys):
    code = main.main([str(a) for a in args] + ["--no_gpu", "--quiet"])
    return code, capsys.readouterr().err


# ------------------------------------------------------------------- transformer layouts

def small_swin() -> SwinTransformer3d:
    torch.manual_seed(0)
    return SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 1],
                             window_size=[2, 2, 2], num_classes=5,
                             stochastic_depth_prob=0.0).eval()


def small_mvit() -> tv_mvit.MViT:
    torch.manual_seed(0)
    blocks = [tv_mvit.MSBlockConfig(1, 8, 8, [3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 2, 2]),
              tv_mvit.MSBlockConfig(1, 8, 16, [3, 3, 3], [3, 3, 3], [1, 2, 2], [1, 1, 1])]
    return tv_mvit.MViT(spatial_size=(32, 32), temporal_size=4, block_setting=blocks,
                        residual_pool=True, residual_with_cls_embed=False, rel_pos_embed=True,
                        proj_after_attn=True, num_classes=5, dropout=0.0).eval()


def hooked_cam(model: nn.Module, layer: nn.Module, clip: torch.Tensor, target: int,
               to_grid) -> torch.Tensor:
    """Grad-CAM by hand: hook the layer, differentiate the logit, ReLU(sum_c mean_hw(g) A)."""
    saved = {}
    handle = layer.register_forward_hook(lambda m, i, o: saved.setdefault("a", o))
    try:
        output = model(clip)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(output[0, target], saved["a"])
    activation, gradient = to_grid(saved["a"].detach()), to_grid(grad)
    weights = gradient.mean(dim=(-2, -1), keepdim=True)
    maps = (weights * activation).sum(1, keepdim=True).clamp(min=0)
    return F.interpolate(maps, size=clip.shape[2:], mode="trilinear", align_corners=False)


def test_swin3d_t_grad_cam_equals_hand_computation_on_channels_last_activations():
    from torchvision.models.video import swin3d_t
    torch.manual_seed(0)
    model = swin3d_t(weights=None).eval()
    clip = torch.randn(1, 3, 4, 64, 64)
    # Swin3D's norm output is channels-last (N, T', h, w, C): C = 768, not T' = 2.
    ours = grad_cam(model, clip, 3)
    by_hand = hooked_cam(model, model.norm, clip, 3, lambda t: t.permute(0, 4, 1, 2, 3))
    torch.testing.assert_close(ours, by_hand, rtol=1e-4, atol=1e-6)
    # Read as channels-first (the old reading) the map is different: the layout matters.
    wrong = hooked_cam(model, model.norm, clip, 3, lambda t: t)
    assert not torch.allclose(by_hand, wrong, atol=1e-4)


@pytest.mark.parametrize("builder", [small_swin, small_mvit])
@pytest.mark.parametrize("method", [grad_cam, grad_cam_pp, layer_cam, score_cam])
def test_cam_family_runs_on_torchvision_video_transformers(builder, method):
    model = builder()
    clip = torch.randn(2, 3, 4, 32, 32)
    info: dict = {}
    maps = method(model, clip, torch.tensor([1, 2]), info=info)
    assert maps.shape == (2, 1, 4, 32, 32) and torch.isfinite(maps).all()
    assert maps.flatten(1).amax(1).gt(0).all()
    grid = [int(v) for v in info["layer_grid"].split("x")]
    # Swin3D: patch 2x4x4 then one 2x merge -> 2 x 4 x 4 (its final norm). MViT: the 2x4x4 patch
    # embedding gives 2 x 8 x 8, and the default layer is the block before the last (the head
    # reads only the class token, so the last block's patch tokens get no gradient): 2 x 8 x 8.
    assert grid == ([2, 4, 4] if builder is small_swin else [2, 8, 8])


def test_mvit_block_tokens_map_to_the_grid_the_block_reports():
    model = small_mvit()
    clip = torch.randn(1, 3, 4, 32, 32)
    saved = {}
    handle = model.blocks[1].register_forward_hook(lambda m, i, o: saved.setdefault("o", o))
    with torch.no_grad():
        model(clip)
    handle.remove()
    tokens, thw = saved["o"]
    assert list(thw) == [2, 4, 4] and tokens.shape[1] == 1 + 2 * 4 * 4
    adapter = as_adapter(model)
    grid = adapter.read_layer("blocks.1", saved["o"], clip.shape)
    # token 1 + (t*h + y)*w + x sits at (t, y, x) on the grid
    t, y, x = 1, 2, 3
    torch.testing.assert_close(grid[0, :, t, y, x], tokens[0, 1 + (t * 4 + y) * 4 + x])


def test_token_and_channels_last_readers_by_hand():
    tokens = torch.arange(2 * (1 + 2 * 2 * 3) * 4, dtype=torch.float32).view(2, 13, 4)
    grid = tokens_to_grid(tokens, (2, 2, 3), prefix_tokens=1)
    assert grid.shape == (2, 4, 2, 2, 3)
    torch.testing.assert_close(grid[1, :, 1, 0, 2], tokens[1, 1 + 1 * 6 + 0 * 3 + 2])
    channels_last = torch.randn(1, 2, 3, 4, 5)
    torch.testing.assert_close(read_channels_last(channels_last, (1, 3, 2, 3, 4))[0, :, 1, 2, 3],
                               channels_last[0, 1, 2, 3])
    frames = torch.randn(2 * 4, 6, 3, 3)                    # (N*T, C, h, w), frames n*T+t
    clip_layout = read_conv_layer(frames, (2, 3, 4, 9, 9))
    torch.testing.assert_close(clip_layout[1, :, 2], frames[1 * 4 + 2])


def test_adapter_input_layouts_feed_the_network_its_own_layout():
    clip = torch.randn(2, 3, 4, 5, 5)
    seen = {}

    class Recorder(nn.Module):
        def forward(self, x):
            seen["x"] = x
            return x.flatten(1)[:, :3]

    for layout, expected in (("NCTHW", clip), ("NTCHW", clip.transpose(1, 2)),
                             ("N(TC)HW", clip.transpose(1, 2).reshape(2, 12, 5, 5))):
        ModelAdapter(Recorder(), input_layout=layout)(clip)
        torch.testing.assert_close(seen["x"], expected)
    # channel t*C + c of the folded layout is frame t, colour c
    folded = seen["x"]
    torch.testing.assert_close(folded[:, 2 * 3 + 1], clip[:, 1, 2])


def test_adapter_baselines_in_pixel_space():
    adapter = ModelAdapter(nn.Identity(), mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.1))
    clip = torch.randn(1, 3, 4, 6, 6)
    black = adapter.baseline("black", clip)
    torch.testing.assert_close(adapter.denormalize(black), torch.zeros_like(clip))
    static = adapter.baseline("static", clip)
    torch.testing.assert_close(static[:, :, 2], clip.mean(dim=2))
    first = adapter.baseline("static_first", clip)
    torch.testing.assert_close(first[:, :, 3], clip[:, :, 0])
    with pytest.raises(ValueError, match="unknown baseline"):
        adapter.baseline("grey", clip)


# ------------------------------------------------------------------ one context, one rule

class BatchNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm3d(4)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.norm.running_mean.uniform_(-1, 1)
            self.norm.running_var.uniform_(0.5, 2)

    def forward(self, clip):
        return self.fc(F.relu(self.norm(self.conv(clip))).mean(dim=(2, 3, 4)))


def test_integrated_gradients_on_a_train_mode_model_do_not_depend_on_the_batch():
    model = BatchNormNet().train()
    stats = model.norm.running_mean.clone()
    clip = torch.randn(1, 3, 4, 6, 6)
    one = integrated_grad(model, clip, 1, num_iter=8, internal_batch_size=1)
    eight = integrated_grad(model, clip, 1, num_iter=8, internal_batch_size=8)
    torch.testing.assert_close(one, eight, rtol=1e-4, atol=1e-6)
    # the map is the eval-mode map, and the model is back in train mode, statistics untouched
    evaluated = integrated_grad(BatchNormNet().eval(), clip, 1, num_iter=8)
    torch.testing.assert_close(one, evaluated, rtol=1e-4, atol=1e-6)
    assert model.training and model.norm.training
    torch.testing.assert_close(model.norm.running_mean, stats)


@pytest.mark.parametrize("name", ["grad", "grad_cam", "integrated_grad", "guided_backprop"])
def test_every_method_runs_in_eval_mode_and_restores_train_mode(name):
    model = BatchNormNet().train()
    clip = torch.randn(2, 3, 4, 6, 6)
    options = {"num_iter": 2} if name == "integrated_grad" else {}
    first = explain(name, model, clip[:1], 1, **options).maps
    pair = explain(name, model, clip, 1, **options).maps
    torch.testing.assert_close(first[0], pair[0], rtol=1e-4, atol=1e-6)   # no batch statistics
    assert model.training and model.norm.training and model.conv.weight.requires_grad


# ---------------------------------------------------------------------- declared options

def test_options_a_method_does_not_take_are_errors_naming_the_methods_that_do():
    with pytest.raises(OptionError, match="grad_cam does not take --num_iter; it is used by "
                                          "integrated_grad, smooth_grad, 2d_ep"):
        check_options("grad_cam", {"num_iter": 5})
    with pytest.raises(OptionError, match="layer_cam does not take --cam_pooling"):
        explain("layer_cam", nn.Conv3d(3, 2, 1), torch.randn(1, 3, 2, 4, 4), 0, cam_pooling="3d")
    assert methods_taking("occlusion_window") == ("occlusion",)
    with pytest.raises(OptionError, match="--rise_p must be <= 1"):
        check_options("rise", {"rise_p": 1.5})
    with pytest.raises(OptionError, match="finite"):
        check_options("smooth_grad", {"noise_level": float("nan")})


def test_library_defaults_are_the_declared_defaults():
    import inspect
    from vis_methods import get_method
    for name, info in METHODS.items():
        signature = inspect.signature(get_method(name).__wrapped__)
        for option, default in info.options.items():
            if option == "channel_reduce":      # applied by explain() to the method's maps
                continue
            assert option in signature.parameters, (name, option)
            library = signature.parameters[option].default
            if isinstance(default, tuple):
                library = tuple(library) if library is not None else None
            assert library == default, (name, option, library, default)


def test_integrated_gradients_default_baseline_is_the_black_clip():
    adapter = TINY_SPEC.adapter(TINY_SPEC.load(None, "kinetics"))
    clip = adapter.normalize(torch.rand(1, 3, 4, 16, 16))
    black = adapter.black_clip(clip)
    torch.testing.assert_close(integrated_grad(adapter, clip, 1, num_iter=4),
                               integrated_grad(adapter, clip, 1, num_iter=4, ig_baseline=black))


def test_smooth_grad_is_signed_only_when_not_squared():
    model, clip = BatchNormNet(), torch.randn(1, 3, 2, 4, 4)
    assert not explain("smooth_grad", model, clip, 0, num_iter=2).signed
    assert explain("smooth_grad", model, clip, 0, num_iter=2, squared=False).signed


def test_result_keeps_diagnostics_per_clip_in_a_batch():
    model = BatchNormNet()
    clip = torch.randn(3, 3, 2, 4, 4)
    result = explain("integrated_grad", model, clip, torch.tensor([0, 1, 2]), num_iter=4)
    gaps = [d["completeness_gap"] for d in result.diagnostics]
    assert len(gaps) == 3 and len(set(gaps)) == 3
    for i in range(3):
        alone = explain("integrated_grad", model, clip[i:i + 1], i, num_iter=4)
        assert alone.diagnostics[0]["completeness_gap"] == pytest.approx(gaps[i], rel=1e-4,
                                                                         abs=1e-6)


# ------------------------------------------------------------------------ the command line

@pytest.fixture
def clips_dir(tmp_path):
    root = tmp_path / "clips"
    write_frames(root / "ironing-aaa", 8, seed=1)
    return root


def test_cli_flag_the_method_does_not_take_exits_2_naming_the_takers(tiny_spec, clips_dir,
                                                                    tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main.main(["--videos_dir", str(clips_dir), "--out_dir", str(tmp_path / "o"),
                   "--vis_method", "grad_cam", "--num_iter", "5", "--no_gpu"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "grad_cam does not take --num_iter" in err and "integrated_grad" in err
    assert not (tmp_path / "o").exists()


def test_rerun_with_other_weights_redoes_clips_and_same_weights_skips(tiny_spec, clips_dir,
                                                                      tmp_path, capsys):
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    for seed, path in ((1, first), (2, second)):
        torch.manual_seed(seed)
        torch.save(TinyVideoNet().state_dict(), path)
    out = tmp_path / "out"
    base = ["--videos_dir", clips_dir, "--out_dir", out, "--vis_method", "grad",
            "--formats", "npy"]
    assert run_main(base + ["--weights", first], capsys)[0] == 0
    npy = out / "grad" / "i3d" / "ironing-aaa.npy"
    with_first = np.load(npy)
    code, err = run_main(base + ["--weights", first], capsys)
    assert code == 0 and "skip: ironing-aaa" in err
    code, err = run_main(base + ["--weights", second], capsys)
    assert code == 0 and "skip:" not in err
    assert not np.allclose(np.load(npy), with_first)


def test_fingerprint_changes_with_every_setting_it_covers():
    settings = RunSettings(methods=("integrated_grad",), model_name="m", out_dir=Path("o"),
                           method_options={"integrated_grad": {"num_iter": 25}},
                           model_identity={"weights": "default:", "pretrain_dataset": "kinetics",
                                           "resize": 128, "crop": 112})
    base = settings.fingerprint("integrated_grad")
    changed = [
        replace(settings, method_options={"integrated_grad": {"num_iter": 8}}),
        replace(settings, model_identity={**settings.model_identity, "weights": "file:x"}),
        replace(settings, model_identity={**settings.model_identity,
                                          "pretrain_dataset": "epic-kitchens-verb"}),
        replace(settings, model_identity={**settings.model_identity, "crop": 100}),
        replace(settings, model_name="m"),     # the model name lives in model_identity
        replace(settings, clip_length=8), replace(settings, target="pred"),
        replace(settings, topk=2), replace(settings, counterfactual=True),
        replace(settings, regression_target="1,2"), replace(settings, polarity="both"),
        replace(settings, precision="bf16"),
    ]
    prints = [s.fingerprint("integrated_grad") for s in changed]
    assert prints[4] == base
    assert all(p != base for i, p in enumerate(prints) if i != 4)
    assert len(set(prints)) == len(prints)
    # nothing else: output formats and progress bars do not redo work
    assert replace(settings, formats=("npy",), progress=False).fingerprint("integrated_grad") == base


def test_target_pred_after_label_run_keeps_both_output_sets(tiny_spec, tmp_path, capsys):
    root = tmp_path / "clips"
    write_frames(root / "ironing-aaa", 8, seed=1)
    out = tmp_path / "out"
    base = ["--videos_dir", root, "--out_dir", out, "--vis_method", "grad", "--formats", "npy"]
    assert run_main(base, capsys)[0] == 0
    assert run_main(base + ["--target", "abseiling"], capsys)[0] == 0
    folder = out / "grad" / "i3d"
    assert sorted(p.name for p in folder.glob("*.npy")) == ["ironing-aaa.npy",
                                                           "ironing-aaa_abseiling.npy"]
    summary = pd.read_csv(folder / "summary.csv")
    assert sorted(summary["target"]) == ["abseiling", "ironing"]
    # --target pred: the prediction's name is in the file name unless it is the label
    assert run_main(base + ["--target", "pred"], capsys)[0] == 0
    summary = pd.read_csv(folder / "summary.csv")
    predicted = summary["prediction"].iloc[0]
    expected = 2 if predicted in ("ironing", "abseiling") else 3
    assert len(summary) == expected and (summary["status"] == "ok").all()


def test_folder_and_video_of_the_same_name_give_two_output_sets(tiny_spec, tmp_path, capsys):
    av = pytest.importorskip("av")
    root = tmp_path / "clips"
    write_frames(root / "ironing-x", 8, seed=1)
    with av.open(str(root / "ironing-x.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 48, 40, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(8):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8),
                                               format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert [c for c in clip_ids([ClipSource(root / "ironing-x", False),
                                 ClipSource(root / "ironing-x.mp4", True)])] == [
        "ironing-x", "ironing-x.mp4"]
    out = tmp_path / "out"
    code, err = run_main(["--videos_dir", root, "--out_dir", out, "--vis_method", "grad",
                          "--formats", "npy"], capsys)
    assert code == 0 and "2 clips: 2 clips done now, 0 skipped" in err
    folder = out / "grad" / "i3d"
    assert sorted(p.name for p in folder.glob("*.npy")) == ["ironing-x.mp4.npy", "ironing-x.npy"]
    assert sorted(pd.read_csv(folder / "summary.csv")["clip"]) == ["ironing-x", "ironing-x.mp4"]


def test_models_import_nothing_from_utils_or_vis_methods():
    import ast
    root = Path(__file__).resolve().parent.parent
    for path in sorted((root / "models").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            assert not any(n.split(".")[0] in ("utils", "vis_methods", "main") for n in names), \
                (path.name, names)
    from models.demo import SYNTHETIC_CLASS_NAMES
    from utils.demo.synthetic import class_names
    assert list(SYNTHETIC_CLASS_NAMES) == class_names()


def test_prediction_shares_the_methods_forward_pass(tiny_spec, tmp_path, capsys, monkeypatch):
    """With the label as target, Grad-CAM's own forward pass gives the prediction: one forward
    per clip instead of two; the prediction is the same as from a separate pass."""
    root = tmp_path / "clips"
    write_frames(root / "ironing-aaa", 8, seed=1)
    write_frames(root / "abseiling-bbb", 8, seed=2)
    calls = []
    original = TinyVideoNet.forward

    def counted(self, clip):
        calls.append(clip.shape[0])
        return original(self, clip)

    monkeypatch.setattr(TinyVideoNet, "forward", counted)
    base = ["--videos_dir", root, "--vis_method", "grad_cam", "--formats", "npy"]
    assert run_main(base + ["--out_dir", tmp_path / "label"], capsys)[0] == 0
    shared = len(calls)
    calls.clear()
    assert run_main(base + ["--out_dir", tmp_path / "pred", "--target", "pred"], capsys)[0] == 0
    separate = len(calls)
    # a class-count probe at start, then one pass per clip with the label, two with --target pred
    assert separate - shared == 2
    rows = [pd.read_csv(tmp_path / d / "grad_cam" / "i3d" / "summary.csv").sort_values("clip")
            for d in ("label", "pred")]
    assert rows[0]["prediction"].tolist() == rows[1]["prediction"].tolist()
    np.testing.assert_allclose(rows[0]["probability"], rows[1]["probability"], atol=1e-5)
