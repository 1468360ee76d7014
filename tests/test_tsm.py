"""TSM (models/tsm.py): the shift, the whole network against a per-frame computation written out
by hand, the published checkpoint key layouts, missing weights, and Grad-CAM per frame."""
from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import get_model_spec
from models.registry import WeightsUnavailableError
from models.tsm import (EPIC_FILE, EPIC_URL, KINETICS_FILE, KINETICS_URL, TSM, load_tsm,
                        temporal_shift)
from vis_methods.cam import grad_cam

TINY_LAYERS = (1, 1, 1, 1)


def official_keys(layers=(3, 4, 6, 3), heads=("new_fc",)):
    """State-dict keys of the published TSM ResNet-50 checkpoints (without ``module.``), written
    from their naming: torchvision ResNet names under ``base_model``, the residual branch's
    first convolution wrapped by the shift as ``conv1.net``, no backbone classifier, then the
    heads (``new_fc``; EPIC-Kitchens: ``fc_verb`` and ``fc_noun``)."""
    def bn(prefix):
        return [f"{prefix}.{name}" for name in
                ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]

    keys = ["base_model.conv1.weight", *bn("base_model.bn1")]
    for stage, blocks in enumerate(layers, start=1):
        for index in range(blocks):
            block = f"base_model.layer{stage}.{index}"
            keys += [f"{block}.conv1.net.weight", *bn(f"{block}.bn1"),
                     f"{block}.conv2.weight", *bn(f"{block}.bn2"),
                     f"{block}.conv3.weight", *bn(f"{block}.bn3")]
            if index == 0:
                keys += [f"{block}.downsample.0.weight", *bn(f"{block}.downsample.1")]
    for head in heads:
        keys += [f"{head}.weight", f"{head}.bias"]
    return keys


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics, so every layer matters in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith("bn1.weight") or name.endswith("bn2.weight") or \
                    name.endswith("bn3.weight") or name.endswith("downsample.1.weight"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.5 + 0.5)
            else:
                fan_in = tensor[0].numel() if tensor.dim() > 1 else 1
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / fan_in ** 0.5)
    return model.eval()


def tiny_tsm(heads=None, output_head=None, segments=4, seed=0) -> TSM:
    return randomise(TSM(heads, output_head, num_segments=segments, layers=TINY_LAYERS), seed)


# ------------------------------------------------------------------------------ the shift

def test_shift_by_hand():
    # one clip, 3 frames, 8 channels (fold = 1), value = 10 * t + c
    frames = torch.tensor([[10.0 * t + c for c in range(8)] for t in range(3)]).view(3, 8, 1, 1)
    shifted = temporal_shift(frames, num_segments=3, fold_div=8).view(3, 8)
    expected = torch.tensor([
        [10, 0, 2, 3, 4, 5, 6, 7],      # channel 0 from frame 1, channel 1 has no frame -1
        [20, 1, 12, 13, 14, 15, 16, 17],
        [0, 11, 22, 23, 24, 25, 26, 27],  # channel 0 has no frame 3
    ], dtype=torch.float32)
    assert torch.equal(shifted, expected)


def test_shift_keeps_clips_apart():
    frames = torch.arange(2 * 2 * 8, dtype=torch.float32).view(4, 8, 1, 1)  # 2 clips x 2 frames
    shifted = temporal_shift(frames, num_segments=2).view(2, 2, 8)
    clips = frames.view(2, 2, 8)
    for n in range(2):
        assert shifted[n, 0, 0] == clips[n, 1, 0] and shifted[n, 1, 0] == 0
        assert shifted[n, 1, 1] == clips[n, 0, 1] and shifted[n, 0, 1] == 0
    with pytest.raises(ValueError, match="whole number"):
        temporal_shift(frames[:3], num_segments=2)


# ------------------------------------------------------------------------------ whole model

def manual_shift(x: torch.Tensor, fold_div: int = 8) -> torch.Tensor:
    """The shift for one clip's frames ``(T, C, h, w)``, frame by frame."""
    t_count, channels = x.shape[:2]
    fold = channels // fold_div
    out = x.clone()
    for t in range(t_count):
        out[t, :fold] = x[t + 1, :fold] if t + 1 < t_count else 0
        out[t, fold:2 * fold] = x[t - 1, fold:2 * fold] if t >= 1 else 0
    return out


def manual_bottleneck(block, x, shift=True):
    residual = manual_shift(x) if shift else x
    out = F.relu(block.bn1(block.conv1.net(residual)))
    out = F.relu(block.bn2(block.conv2(out)))
    out = block.bn3(block.conv3(out))
    identity = block.downsample(x) if block.downsample is not None else x
    return F.relu(out + identity)


def manual_tsm(model: TSM, clip: torch.Tensor, shift=True) -> torch.Tensor:
    """Each clip's frames ``(T, C, H, W)`` through the backbone, shift inside every residual
    branch, one logit vector per frame, averaged."""
    base = model.base_model
    outputs = []
    for n in range(clip.shape[0]):
        x = torch.stack([clip[n, :, t] for t in range(clip.shape[2])])
        x = base.maxpool(F.relu(base.bn1(base.conv1(x))))
        for stage in (base.layer1, base.layer2, base.layer3, base.layer4):
            for block in stage:
                x = manual_bottleneck(block, x, shift)
        features = x.mean(dim=(2, 3))
        head = getattr(model, model.output_head)
        outputs.append((features @ head.weight.T + head.bias).mean(dim=0))
    return torch.stack(outputs)


def test_whole_model_equals_manual_per_frame_computation():
    model = tiny_tsm({"new_fc": 5})
    torch.manual_seed(1)
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        output = model(clip)
        expected = manual_tsm(model, clip)
        without_shift = manual_tsm(model, clip, shift=False)
        # the reference's layout: (N, C, T, H, W) read as (N*T, C, H, W) frames
        scrambled = model(clip.reshape(2, 4, 3, 32, 32).transpose(1, 2))
    assert output.shape == (2, 5)
    assert torch.allclose(output, expected, atol=1e-4)
    assert (output - without_shift).abs().max() > 1e-2  # the shift matters
    assert (output - scrambled).abs().max() > 1e-2      # so does the frame order


def test_frame_count_must_match_segments():
    model = tiny_tsm({"new_fc": 3})
    with pytest.raises(ValueError, match="clips of 4 frames"):
        model(torch.zeros(1, 3, 8, 32, 32))


# ------------------------------------------------------------------------------ checkpoints

def test_full_resnet50_keys_match_the_published_layouts():
    with torch.device("meta"):
        kinetics = TSM({"new_fc": 400})
        epic = TSM({"fc_verb": 125, "fc_noun": 352}, output_head="fc_noun")
    assert list(kinetics.state_dict()) == official_keys(heads=("new_fc",))
    assert list(epic.state_dict()) == official_keys(heads=("fc_verb", "fc_noun"))
    shapes = {k: tuple(v.shape) for k, v in epic.state_dict().items()}
    assert shapes["base_model.layer1.0.conv1.net.weight"] == (64, 64, 1, 1)
    assert shapes["base_model.layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    assert shapes["fc_verb.weight"] == (125, 2048) and shapes["fc_noun.weight"] == (352, 2048)
    assert tuple(kinetics.state_dict()["new_fc.weight"].shape) == (400, 2048)


def test_kinetics_checkpoint_layout_loads_strictly(tmp_path):
    source = tiny_tsm({"new_fc": 6}, segments=8, seed=3)
    state = source.state_dict()
    assert list(state) == official_keys(TINY_LAYERS, ("new_fc",))
    path = tmp_path / KINETICS_FILE
    torch.save({"epoch": 100, "arch": "resnet50", "best_prec1": 74.1,
                "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model = load_tsm(path, "kinetics", layers=TINY_LAYERS)
    clip = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(clip), source(clip), atol=1e-5)
    assert not model.training


@pytest.mark.parametrize("dataset, head", [("epic-kitchens-verb", "fc_verb"),
                                           ("epic-kitchens-noun", "fc_noun")])
def test_epic_checkpoint_layout_picks_the_head(tmp_path, dataset, head):
    source = tiny_tsm(dict(fc_verb=125, fc_noun=352), segments=8, seed=4)
    path = tmp_path / EPIC_FILE
    # as published: settings and the training namespace beside an unprefixed state dict
    torch.save({"model_type": "tsm", "segment_count": 8, "modality": "RGB", "arch": "resnet50",
                "shift_place": "blockres", "shift_div": 8, "temporal_pool": False,
                "non_local": False, "args": argparse.Namespace(dropout=0.5, flow_length=5),
                "state_dict": source.state_dict()}, path)
    model = load_tsm(path, dataset, layers=TINY_LAYERS)
    source.output_head = head
    clip = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        output = model(clip)
        assert output.shape == (1, 125 if head == "fc_verb" else 352)
        assert torch.allclose(output, source(clip), atol=1e-5)
    with pytest.raises(WeightsUnavailableError, match="epic-kitchens-verb or epic-kitchens-noun"):
        load_tsm(path, "kinetics", layers=TINY_LAYERS)


def test_checkpoint_that_does_not_fit(tmp_path):
    state = tiny_tsm({"new_fc": 6}, segments=8).state_dict()
    state.pop("base_model.layer1.0.conv1.net.weight")
    state["base_model.layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)  # unshifted naming
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(WeightsUnavailableError) as error:
        load_tsm(path, "kinetics", layers=TINY_LAYERS)
    message = str(error.value)
    assert "1 missing keys (base_model.layer1.0.conv1.net.weight)" in message
    assert "1 unexpected keys" in message and "\n" not in message


@pytest.mark.parametrize("dataset, file_name, url", [
    ("kinetics", KINETICS_FILE, KINETICS_URL),
    ("epic-kitchens-noun", EPIC_FILE, EPIC_URL),
])
def test_missing_weights_name_file_and_source(tmp_path, monkeypatch, dataset, file_name, url):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as error:
        get_model_spec("tsm").load(None, dataset)
    message = str(error.value)
    assert file_name in message and url in message and str(tmp_path) in message
    assert "--weights" in message and "\n" not in message


def test_spec_settings_and_class_names():
    spec = get_model_spec("tsm")
    assert (spec.clip_length, spec.resize, spec.crop) == (8, 256, 224)
    assert tuple(spec.mean) == (0.485, 0.456, 0.406) and tuple(spec.std) == (0.229, 0.224, 0.225)
    assert spec.target_layer == "base_model.layer4"
    assert set(spec.pretrain_datasets) == {"kinetics", "epic-kitchens-verb", "epic-kitchens-noun"}
    assert len(spec.class_names("kinetics")) == 400
    assert spec.class_names("epic-kitchens-verb")[:2] == ["take", "put"]
    assert len(spec.class_names("epic-kitchens-noun")) == 352


# ------------------------------------------------------------------------------ Grad-CAM

def test_grad_cam_gives_one_map_per_frame():
    model = tiny_tsm({"new_fc": 5}, segments=4, seed=2)
    torch.manual_seed(5)
    clips = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        predicted = model(clips).argmax(1)
    info: dict = {}
    maps = grad_cam(model, clips, predicted, target_layer="base_model.layer4", info=info)
    assert maps.shape == (2, 1, 4, 64, 64)
    assert info["layer_grid"] == "4x2x2"  # 4 frames of a 2 x 2 grid
    for n in range(2):
        frame_maps = maps[n, 0].flatten(1)
        assert frame_maps.abs().sum() > 0
        distinct = {tuple(torch.round(m * 1e4).tolist()) for m in frame_maps}
        assert len(distinct) == 4
    # clips in a batch do not mix: each equals its own single-clip map
    for n in range(2):
        alone = grad_cam(model, clips[n:n + 1], predicted[n:n + 1],
                         target_layer="base_model.layer4")
        assert torch.allclose(alone, maps[n:n + 1], atol=1e-5)
