"""Video transformers: torchvision MViT / Video Swin specs and readers, Hugging Face loader and
token readers, and the CAM family through layer readers (checked against hand computations)."""
from __future__ import annotations

import json
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import video as tv_video
from torchvision.models.video import mvit as tv_mvit

from models import WeightsUnavailableError
from models import transformers as tvt
from models.hf import (hf_logits, layer_readers, load_hf_model,
                       preprocessing_from, read_timesformer_tokens)
from vis_methods import cam
from vis_methods._context import capture_layer

CAM_METHODS = ("grad_cam", "grad_cam_pp", "xgrad_cam", "layer_cam")


def _read(model, layer, reader):
    """The model in an adapter that reads ``layer`` with ``reader``."""
    from models.adapter import as_adapter
    return as_adapter(model, layer_readers={layer: reader})


def small_mvit_v2_s(spatial=(64, 64), temporal=4):
    """torchvision's MViT v2-S architecture (its block settings) for small clips, random weights."""
    captured = {}
    with mock.patch.object(tv_mvit, "_mvit", lambda **kwargs: captured.update(kwargs)):
        tv_video.mvit_v2_s()
    captured.pop("weights"), captured.pop("progress")
    captured.update(spatial_size=spatial, temporal_size=temporal)
    torch.manual_seed(0)
    return tv_mvit.MViT(**captured).eval()


def hooked(model, layer, clip, target):
    """Raw layer output and its gradient for ``model(clip)[:, target].sum()``."""
    with capture_layer(model, layer) as record, torch.enable_grad():
        score = model(clip)[:, target].sum()
        raw = record["activation"]
        tensor = raw[0] if isinstance(raw, tuple) else raw
        (grad,) = torch.autograd.grad(score, tensor)
    return raw, tensor.detach(), grad


def hand_grad_cam(activation, gradient, size):
    """Grad-CAM with per-time-slice weights on ``(N, C, T', h', w')`` tensors, upsampled."""
    weights = gradient.mean((-2, -1), keepdim=True)
    maps = (weights * activation).sum(1, keepdim=True).clamp(min=0)
    return F.interpolate(maps, size=size, mode="trilinear", align_corners=False)


# ------------------------------------------------------------------------ torchvision specs
@pytest.mark.parametrize("spec, weights, clip_length", [
    (tvt.MVIT_V1_B, tv_video.MViT_V1_B_Weights.KINETICS400_V1, 16),
    (tvt.MVIT_V2_S, tv_video.MViT_V2_S_Weights.KINETICS400_V1, 16),
    (tvt.SWIN3D_T, tv_video.Swin3D_T_Weights.KINETICS400_V1, 32),
    (tvt.SWIN3D_S, tv_video.Swin3D_S_Weights.KINETICS400_V1, 32),
    (tvt.SWIN3D_B, tv_video.Swin3D_B_Weights.KINETICS400_V1, 32),
])
def test_torchvision_specs_follow_their_weights_transforms(spec, weights, clip_length):
    transform = weights.transforms()
    assert (spec.resize, spec.crop) == (transform.resize_size[0], transform.crop_size[0])
    assert list(spec.mean) == transform.mean and list(spec.std) == transform.std
    assert spec.clip_length == clip_length
    assert len(spec.class_names("kinetics")) == 400
    assert spec.target_layer in tvt.LAYER_READERS[spec.name]


def test_offline_missing_torchvision_weights_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDEOVISUAL_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match=r"swin3d_t-7615ae03\.pth") as error:
        tvt.SWIN3D_T.load(None, "kinetics")
    assert "\n" not in str(error.value)


def test_registry_names_resolve():
    from models import get_model_spec
    for name in ("mvit_v1_b", "mvit_v2_s", "swin3d_t", "swin3d_s", "swin3d_b", "demo_transformer"):
        assert get_model_spec(name).name == name


# ----------------------------------------------------------------------------- Video Swin
@pytest.fixture(scope="module")
def swin():
    torch.manual_seed(0)
    return tv_video.swin3d_t(weights=None).eval()


def test_swin_grad_cam_equals_hand_computation(swin):
    clip = torch.randn(1, 3, 4, 64, 64)
    raw, activation, gradient = hooked(swin, "norm", clip, 7)
    assert activation.shape == (1, 2, 2, 2, 768)            # (N, T', h', w', C)
    expected = hand_grad_cam(activation.permute(0, 4, 1, 2, 3), gradient.permute(0, 4, 1, 2, 3),
                             (4, 64, 64))
    got = cam.grad_cam(_read(swin, "norm", tvt.read_channels_last), clip, 7, target_layer="norm")
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert expected.amax() > 0
    # The layer-wise rule: relu(sum_c relu(g) A) position by position.
    layer = cam.layer_cam(_read(swin, "norm", tvt.read_channels_last), clip, 7, target_layer="norm")
    by_hand = (gradient.clamp(min=0) * activation).sum(-1).clamp(min=0).unsqueeze(1)
    by_hand = F.interpolate(by_hand, size=(4, 64, 64), mode="trilinear", align_corners=False)
    assert torch.allclose(layer, by_hand, rtol=1e-4, atol=1e-6)


def test_swin_is_read_channels_last_even_as_a_bare_module(swin):
    """A bare Swin3D is recognised by the adapter (channels-last readers); read channels-first,
    (N, C=T', ...), the map would be wrong: the reader is what makes the map right."""
    from models.adapter import ModelAdapter, read_conv_layer
    clip = torch.randn(1, 3, 4, 64, 64)
    with_reader = cam.grad_cam(_read(swin, "norm", tvt.read_channels_last), clip, 3,
                               target_layer="norm")
    bare = cam.grad_cam(swin, clip, 3, target_layer="norm")
    assert torch.allclose(with_reader, bare)
    channels_first = cam.grad_cam(ModelAdapter(swin, default_reader=read_conv_layer), clip, 3,
                                  target_layer="norm")
    assert not torch.allclose(with_reader, channels_first)


def test_swin_runs_every_cam_method(swin):
    clip = torch.randn(1, 3, 4, 64, 64)
    for name in CAM_METHODS:
        info = {}
        maps = getattr(cam, name)(_read(swin, "norm", tvt.read_channels_last), clip, 1,
                                  target_layer="norm", info=info)
        assert maps.shape == (1, 1, 4, 64, 64) and torch.isfinite(maps).all()
        assert maps.amin() >= 0 and maps.amax() > 0, name
        assert info["layer_grid"] == "2x2x2"
    info = {}
    # Score-CAM costs one forward per channel: 12 channels of the patch embedding, chosen by
    # the reader, keep the test short.
    maps = cam.score_cam(_read(swin, "features.0",
                               lambda out, shape: tvt.read_channels_last(out, shape)[:, :12]),
                         clip, 1, target_layer="features.0", internal_batch_size=12, info=info)
    assert maps.shape == (1, 1, 4, 64, 64) and maps.amax() > 0
    assert info["layer_grid"] == "2x16x16"


# ----------------------------------------------------------------------------------- MViT
@pytest.fixture(scope="module")
def mvit():
    return small_mvit_v2_s()


def test_mvit_last_block_gives_no_patch_gradient_but_block_14_does(mvit):
    clip = torch.randn(1, 3, 4, 64, 64)
    _, _, last = hooked(mvit, "blocks.15", clip, 0)
    assert last[:, 1:].abs().amax() == 0          # the head reads the class token only
    raw, tokens, gradient = hooked(mvit, tvt.MVIT_V2_S.target_layer, clip, 0)
    assert tuple(raw[1]) == (2, 2, 2) and tokens.shape == (1, 9, 768)
    assert gradient[:, 1:].abs().amax() > 0


def test_mvit_grad_cam_equals_hand_computation(mvit):
    clip = torch.randn(1, 3, 4, 64, 64)
    raw, tokens, gradient = hooked(mvit, "blocks.14", clip, 5)
    as_grid = lambda x: x[:, 1:].reshape(1, 2, 2, 2, -1).permute(0, 4, 1, 2, 3)  # noqa: E731
    expected = hand_grad_cam(as_grid(tokens), as_grid(gradient), (4, 64, 64))
    got = cam.grad_cam(_read(mvit, "blocks.14", tvt.read_mvit_block), clip, 5, target_layer="blocks.14")
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6) and expected.amax() > 0
    # norm (N, 1 + L, C) read with the grid derived from the clip and the total stride.
    normed = tvt.read_mvit_tokens(torch.arange(9.0).view(1, 9, 1), (1, 3, 4, 64, 64))
    assert normed.shape == (1, 1, 2, 2, 2) and normed[0, 0, 1, 0, 1] == 1 + 4 + 1


def test_mvit_runs_every_cam_method(mvit):
    clip = torch.randn(1, 3, 4, 64, 64)
    for name in CAM_METHODS:
        maps = getattr(cam, name)(_read(mvit, "blocks.14", tvt.read_mvit_block), clip, 2,
                                  target_layer="blocks.14")
        assert maps.shape == (1, 1, 4, 64, 64) and torch.isfinite(maps).all()
        assert maps.amin() >= 0 and maps.amax() > 0, name
    info = {}
    maps = cam.score_cam(_read(mvit, "blocks.0",
                               lambda out, shape: tvt.read_mvit_block(out, shape)[:, :12]),
                         clip, 2, target_layer="blocks.0", internal_batch_size=12, info=info)
    assert maps.shape == (1, 1, 4, 64, 64) and maps.amax() > 0
    assert info["layer_grid"] == "2x16x16"


# --------------------------------------------------------------------------- Hugging Face
def _tiny(kind):
    from transformers import TimesformerConfig, VideoMAEConfig, VivitConfig
    common = dict(image_size=32, num_frames=4, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=64, num_labels=3,
                  id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    if kind == "videomae":
        return VideoMAEConfig(patch_size=8, tubelet_size=2, **common)
    if kind == "vivit":
        return VivitConfig(tubelet_size=[2, 8, 8], **common)
    return TimesformerConfig(patch_size=8, attention_type="divided_space_time", **common)


def save_tiny(kind, folder, processor=None):
    from transformers import AutoModelForVideoClassification
    torch.manual_seed(0)
    model = AutoModelForVideoClassification.from_config(_tiny(kind))
    model.save_pretrained(folder)
    if processor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    vivit_processor = {"size": {"shortest_edge": 36}, "crop_size": {"height": 32, "width": 32},
                       "do_rescale": True, "rescale_factor": 1 / 127.5, "offset": True,
                       "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    return {kind: load_hf_model(save_tiny(kind, root / kind,
                                          vivit_processor if kind == "vivit" else None))
            for kind in ("videomae", "vivit", "timesformer")}


def test_hf_spec_from_config_and_processor(tiny_hf):
    model, spec = tiny_hf["vivit"]
    assert spec.class_names("kinetics") == ["a", "b", "c"] and spec.clip_length == 4
    assert (spec.resize, spec.crop) == (36, 32)
    # ViViT maps pixels to [-1, 1] (x / 127.5 - 1) and then normalises with 0.5 / 0.5.
    rgb = torch.rand(1, 3, 4, 32, 32)
    assert torch.allclose(spec.normalize(rgb), ((rgb * 255 / 127.5 - 1) - 0.5) / 0.5, atol=1e-5)
    _, spec = tiny_hf["videomae"]
    assert spec.mean == (0.485, 0.456, 0.406) and "defaults" in spec.description
    assert spec.target_layer == "hf.videomae.encoder.layer.1"
    plain = preprocessing_from({"size": {"height": 40, "width": 40}, "do_center_crop": False},
                               _tiny("videomae"))
    assert (plain["resize"], plain["crop"]) == (40, 40)


def test_hf_wrapper_takes_project_clips(tiny_hf):
    model, _ = tiny_hf["timesformer"]
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        expected = hf_logits(model.hf(pixel_values=clip.transpose(1, 2)))
        assert torch.equal(model(clip), expected) and expected.shape == (2, 3)


def test_missing_hf_model_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "cache"))
    for name in (str(tmp_path / "absent"), "someone/not-downloaded-videomae"):
        with pytest.raises(WeightsUnavailableError, match="local folder or the Hugging Face cache") as error:
            load_hf_model(name)
        assert name in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("kind", ["videomae", "vivit"])
def test_tubelet_reader_matches_the_patch_projection(tiny_hf, kind):
    """Token i of the sequence is the projection's output at its (t, y, x) cell."""
    model, spec = tiny_hf[kind]
    base = model.hf.videomae if kind == "videomae" else model.hf.vivit
    clip = torch.randn(1, 3, 4, 32, 32)
    with capture_layer(model, base.embeddings.patch_embeddings.projection) as conv, \
            capture_layer(model, base.embeddings.patch_embeddings) as tokens, torch.no_grad():
        model(clip)
    reader = layer_readers(model.hf)[spec.target_layer]
    prefix = 0 if kind == "videomae" else 1
    sequence = tokens["activation"]
    if prefix:
        sequence = torch.cat([torch.zeros_like(sequence[:, :1]), sequence], 1)
    assert torch.equal(reader(sequence, tuple(clip.shape)), conv["activation"])
    assert conv["activation"].shape[2:] == (2, 4, 4)


def test_timesformer_reader_matches_the_patch_projection(tiny_hf):
    model, _ = tiny_hf["timesformer"]
    embeddings = model.hf.timesformer.embeddings
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        embeddings.position_embeddings.zero_()
        embeddings.time_embeddings.zero_()
        with capture_layer(model, embeddings.patch_embeddings.projection) as conv, \
                capture_layer(model, embeddings) as tokens:
            model(clip)
    frames = conv["activation"]                                      # (N*T, C, h', w')
    expected = frames.reshape(1, 4, *frames.shape[1:]).transpose(1, 2)
    got = read_timesformer_tokens(tokens["activation"], tuple(clip.shape), patch=8)
    assert torch.allclose(got, expected)


@pytest.mark.parametrize("kind", ["videomae", "vivit", "timesformer"])
def test_hf_default_layer_grad_cam_equals_hand_computation(tiny_hf, kind):
    model, spec = tiny_hf[kind]
    reader = layer_readers(model.hf)[spec.target_layer]
    clip = torch.randn(1, 3, 4, 32, 32)
    raw, _, gradient = hooked(model, spec.target_layer, clip, 1)
    shape = tuple(clip.shape)
    activation, gradient = reader(raw.detach(), shape), reader(gradient, shape)
    assert gradient.abs().amax() > 0           # the patch tokens of the default layer get gradient
    expected = hand_grad_cam(activation, gradient, (4, 32, 32))
    for name in CAM_METHODS:
        maps = getattr(cam, name)(_read(model, spec.target_layer, reader), clip, 1,
                                  target_layer=spec.target_layer)
        assert maps.shape == (1, 1, 4, 32, 32) and torch.isfinite(maps).all()
        if name == "grad_cam":
            assert torch.allclose(maps, expected, rtol=1e-4, atol=1e-6)


def test_hf_score_cam_equals_hand_computation(tiny_hf):
    model, spec = tiny_hf["videomae"]
    reader = layer_readers(model.hf)[spec.target_layer]
    clip = torch.randn(1, 3, 4, 32, 32)
    with capture_layer(model, spec.target_layer) as record, torch.no_grad():
        model(clip)
    activation = reader(record["activation"], tuple(clip.shape))           # (1, 32, 2, 4, 4)
    scores = []
    with torch.no_grad():
        for channel in range(activation.shape[1]):
            mask = F.interpolate(activation[:, channel:channel + 1], size=(4, 32, 32),
                                 mode="trilinear", align_corners=False)
            mask = (mask - mask.min()) / (mask.max() - mask.min())
            scores.append(model(clip * mask)[0, 2])
    weights = torch.softmax(torch.stack(scores), 0).view(1, -1, 1, 1, 1)
    expected = F.interpolate((weights * activation).sum(1, keepdim=True).clamp(min=0),
                             size=(4, 32, 32), mode="trilinear", align_corners=False)
    got = cam.score_cam(_read(model, spec.target_layer, reader), clip, 2,
                        target_layer=spec.target_layer, internal_batch_size=8)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6)
