"""CNN-LSTM models (models/cnn_lstm.py): forward against a hand-written computation, attention,
checkpoints, missing ImageNet weights, and the CAM family giving one map per frame."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models import get_model_spec
from models.cnn_lstm import (CNNLSTM, CNNLSTMAttention, TARGET_LAYERS, build_cnn_lstm,
                             hmdb51_class_names, load_cnn_lstm)
from models.registry import WeightsUnavailableError
from vis_methods.cam import grad_cam, grad_cam_pp, layer_cam, xgrad_cam

NAMES = {("resnet18", False): "resnet18_lstm", ("resnet18", True): "resnet18_lstm_attn",
         ("vgg16", False): "vgg16_lstm", ("vgg16", True): "vgg16_lstm_attn"}


def small_model(backbone="resnet18", attention=False, num_classes=4, seed=0) -> CNNLSTM:
    torch.manual_seed(seed)
    model = build_cnn_lstm(backbone, attention, num_classes, hidden_dim=8, attention_dim=6)
    with torch.no_grad():  # random BatchNorm statistics so eval mode is not the identity
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def manual_forward(model: CNNLSTM, clip: torch.Tensor):
    """Frame by frame: encoder on each frame, the LSTM cell equations, then the head on the
    last state or the attention-weighted sum. Returns (logits, attention weights or None)."""
    lstm = model.lstm
    w_ih, w_hh = lstm.weight_ih_l0, lstm.weight_hh_l0
    bias = lstm.bias_ih_l0 + lstm.bias_hh_l0
    logits, attentions = [], []
    for n in range(clip.shape[0]):
        h = torch.zeros(lstm.hidden_size)
        c = torch.zeros(lstm.hidden_size)
        states = []
        for t in range(clip.shape[2]):
            x = model.encoder(clip[n:n + 1, :, t])[0]
            i, f, g, o = (w_ih @ x + w_hh @ h + bias).chunk(4)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            states.append(h)
        states = torch.stack(states)
        if model.attention is None:
            summary = states[-1]
        else:
            proj, score = model.attention.proj, model.attention.score
            scores = torch.stack([score.weight[0] @ torch.tanh(proj.weight @ s + proj.bias)
                                  + score.bias[0] for s in states])
            weights = torch.exp(scores) / torch.exp(scores).sum()
            attentions.append(weights)
            summary = (weights[:, None] * states).sum(0)
        logits.append(model.head.weight @ summary + model.head.bias)
    return torch.stack(logits), (torch.stack(attentions) if attentions else None)


@pytest.mark.parametrize("backbone, attention", [("resnet18", False), ("resnet18", True),
                                                 ("vgg16", True)])
def test_forward_equals_manual_computation(backbone, attention):
    model = small_model(backbone, attention)
    torch.manual_seed(1)
    clip = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        output = model(clip)
        expected, weights = manual_forward(model, clip)
        reversed_time = model(clip.flip(2))
    assert output.shape == (2, 4)
    assert torch.allclose(output, expected, atol=1e-4)
    assert (output - reversed_time).abs().max() > 1e-3  # frame order matters
    if attention:
        assert isinstance(model, CNNLSTMAttention)
        with torch.no_grad():
            attention_weights = model.temporal_attention(clip)
        assert attention_weights.shape == (2, 3)
        assert torch.allclose(attention_weights.sum(1), torch.ones(2), atol=1e-6)
        assert torch.allclose(attention_weights, weights, atol=1e-5)
    else:
        assert not hasattr(model, "temporal_attention")


def test_encoder_has_no_inplace_relu_and_registry_layers_exist():
    for (backbone, attention), name in NAMES.items():
        spec = get_model_spec(name)
        assert spec.target_layer == TARGET_LAYERS[backbone]
        assert (spec.clip_length, spec.crop) == (16, 224)
        with torch.device("meta"):
            model = build_cnn_lstm(backbone, attention, 51)
        layer = model.get_submodule(spec.target_layer)
        assert not any(getattr(m, "inplace", False) for m in model.modules())
        if backbone == "vgg16":  # the ReLU right after the last (13th) convolution
            assert isinstance(layer, nn.ReLU)
            convolutions = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
            assert len(convolutions) == 13 and convolutions[-1] == "encoder.features.28"
    assert len(hmdb51_class_names()) == 51 and hmdb51_class_names()[0] == "brush_hair"


@pytest.mark.parametrize("method", [grad_cam, grad_cam_pp, xgrad_cam, layer_cam])
@pytest.mark.parametrize("backbone, attention", [("resnet18", False), ("resnet18", True),
                                                 ("vgg16", False), ("vgg16", True)])
def test_cam_family_gives_distinct_maps_per_frame(method, backbone, attention):
    model = small_model(backbone, attention, seed=2)
    torch.manual_seed(3)
    clip = torch.randn(1, 3, 3, 64, 64)
    with torch.no_grad():
        predicted = int(model(clip).argmax(1))
    info: dict = {}
    maps = method(model, clip, predicted, target_layer=TARGET_LAYERS[backbone], info=info)
    assert maps.shape == (1, 1, 3, 64, 64)
    assert info["layer_grid"] == ("3x2x2" if backbone == "resnet18" else "3x4x4")
    frame_maps = maps[0, 0].flatten(1)
    assert torch.isfinite(frame_maps).all() and (frame_maps >= 0).all()
    assert (frame_maps.abs().sum(1) > 0).sum() >= 2
    distinct = {tuple(torch.round(m * 1e5).tolist()) for m in frame_maps}
    assert len(distinct) == 3


def test_checkpoint_round_trip_with_prefix_and_wrapping(tmp_path):
    source = small_model("resnet18", True, num_classes=5, seed=4)
    path = tmp_path / "trained.pth"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()},
                "epoch": 7}, path)
    model = get_model_spec("resnet18_lstm_attn").load(path, "hmdb51")
    assert model.lstm.hidden_size == 8 and model.head.out_features == 5
    clip = torch.randn(1, 3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(clip), source(clip), atol=1e-5)
    with pytest.raises(ValueError, match="5 outputs but 51 class names"):
        load_cnn_lstm("resnet18", True, path, num_classes=51)
    with pytest.raises(WeightsUnavailableError, match="does not fit") as error:
        load_cnn_lstm("resnet18", False, path)  # an attention checkpoint into the plain model
    assert "unexpected keys (attention.proj.weight" in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_imagenet_weights_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("VIDEOVISUAL_OFFLINE", "1")
    for name, file_name in (("resnet18_lstm", "resnet18-f37072fd.pth"),
                            ("vgg16_lstm_attn", "vgg16-397923af.pth")):
        with pytest.raises(WeightsUnavailableError) as error:
            get_model_spec(name).load(None, "hmdb51")
        message = str(error.value)
        assert file_name in message and f"https://download.pytorch.org/models/{file_name}" \
            in message and "\n" not in message


def test_cached_imagenet_encoder_and_untrained_head_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("VIDEOVISUAL_OFFLINE", "1")
    from torchvision.models import resnet18
    torch.manual_seed(5)
    imagenet = resnet18(weights=None)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(imagenet.state_dict(), cache / "resnet18-f37072fd.pth")
    with pytest.warns(UserWarning, match="LSTM and the classifier are random"):
        model = load_cnn_lstm("resnet18", False, None, num_classes=7)
    assert model.head.out_features == 7 and not model.training
    assert torch.equal(model.encoder.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)
