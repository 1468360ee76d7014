"""Attention rollout and gradient-weighted attention: hand-built attention stacks, a model whose
evidence sits in one known token, Hugging Face models against independent computations, the
refusal for windowed/pooled attention, and the demo transformer on synthetic ground truth."""
from __future__ import annotations

from functools import partial
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.hf import read_tubelet_tokens
from vis_methods import cam
from vis_methods.attention import (_divided_matrices, attention_gradient, attention_record,
                                   attention_rollout, layer_matrices, rollout_relevance)


def _read(model, layer, reader):
    """The model in an adapter that reads ``layer`` with ``reader``."""
    from models.adapter import as_adapter
    return as_adapter(model, layer_readers={layer: reader})


def rownorm_residual(a):
    m = 0.5 * a + 0.5 * torch.eye(a.shape[-1])
    return m / m.sum(-1, keepdim=True)


def stochastic(*shape, generator):
    return torch.softmax(3 * torch.randn(*shape, generator=generator), dim=-1)


class FixedAttention(nn.Module):
    """A stand-in model whose attention record is given (joint attention, grid 2x2x2)."""

    def __init__(self, attentions, prefix_tokens):
        super().__init__()
        self.attentions, self.prefix_tokens = attentions, prefix_tokens

    def attention_record(self, clip):
        return {"output": torch.zeros(clip.shape[0], 2), "attentions": self.attentions,
                "grid": (2, 2, 2), "prefix_tokens": self.prefix_tokens, "structure": "joint",
                "token_order": "tcell"}


# --------------------------------------------------------------------- hand-built stacks
@pytest.mark.parametrize("prefix", [1, 0])
def test_rollout_of_two_layers_equals_the_product_by_hand(prefix):
    g = torch.Generator().manual_seed(0)
    length = prefix + 8
    a1, a2 = stochastic(1, 3, length, length, generator=g), stochastic(1, 3, length, length, generator=g)
    clip = torch.zeros(1, 3, 2, 2, 2)          # the token grid is the clip grid: no upsampling
    got = attention_rollout(FixedAttention([a1, a2], prefix), clip, 0)
    product = rownorm_residual(a2[0].mean(0)) @ rownorm_residual(a1[0].mean(0))
    row = product[0] if prefix else product.mean(0)
    assert torch.allclose(got.flatten(), row[prefix:], atol=1e-6)
    # Max fusion and discarding the lowest half of each row.
    got = attention_rollout(FixedAttention([a1, a2], prefix), clip, 0, head_fusion="max",
                            discard_ratio=0.5)
    fused = []
    for a in (a1, a2):
        m = a[0].amax(0)
        low = m.topk(length // 2, dim=-1, largest=False).indices
        fused.append(rownorm_residual(m.scatter(-1, low, 0.0)))
    product = fused[1] @ fused[0]
    row = product[0] if prefix else product.mean(0)
    assert torch.allclose(got.flatten(), row[prefix:], atol=1e-6)


@pytest.mark.parametrize("order", ["tcell", "cellt"])
def test_divided_attention_matrices_by_hand(order):
    g = torch.Generator().manual_seed(1)
    frames, cells, n = 3, 4, 2
    temporal = stochastic(n * cells, frames, frames, generator=g)
    spatial = stochastic(n * frames, 1 + cells, 1 + cells, generator=g)
    mix_t, mix_s = _divided_matrices(temporal, spatial, n, (frames, 2, 2), order)

    def idx(t, c):
        return 1 + (t * cells + c if order == "tcell" else c * frames + t)

    length = 1 + frames * cells
    want_t, want_s = torch.zeros(n, length, length), torch.zeros(n, length, length)
    for b in range(n):
        want_t[b, 0, 0] = 1
        for c in range(cells):
            for t in range(frames):
                for u in range(frames):
                    want_t[b, idx(t, c), idx(u, c)] = temporal[b * cells + c, t, u]
        for t in range(frames):
            s = spatial[b * frames + t]
            want_s[b, 0, 0] += s[0, 0] / frames
            for c in range(cells):
                want_s[b, 0, idx(t, c)] = s[0, 1 + c] / frames
                want_s[b, idx(t, c), 0] = s[1 + c, 0]
                for d in range(cells):
                    want_s[b, idx(t, c), idx(t, d)] = s[1 + c, 1 + d]
    assert torch.allclose(mix_t, want_t) and torch.allclose(mix_s, want_s)
    assert torch.allclose(mix_s.sum(-1), torch.ones(n, length), atol=1e-6)


# ------------------------------------------------------------- evidence in a known token
class OneTokenModel(nn.Module):
    """Tubelet tokens 2x8x8, a class token whose attention goes to token ``k`` only, and a head
    on the class token: the logits depend on token ``k`` alone."""

    def __init__(self, k, grid=(2, 4, 4)):
        super().__init__()
        torch.manual_seed(0)
        self.grid = grid
        self.embed = nn.Conv3d(3, 4, (2, 8, 8), (2, 8, 8), bias=False)
        nn.init.uniform_(self.embed.weight, 0.0, 0.1)
        self.tokens = nn.Identity()
        length = 1 + int(np.prod(grid))
        logits = torch.randn(length, length)
        logits[0] = -1e9
        logits[0, 1 + k] = 0.0
        self.logits = nn.Parameter(logits)
        self.head = nn.Linear(4, 2, bias=False)
        nn.init.uniform_(self.head.weight, 0.5, 1.0)

    def attention_record(self, clip):
        tokens = self.tokens(torch.cat([torch.zeros(clip.shape[0], 1, 4),
                                        self.embed(clip).flatten(2).transpose(1, 2)], 1))
        scores = 0.1 * tokens @ tokens.transpose(1, 2) + self.logits    # row 0: one-hot at k
        attention = torch.softmax(scores, -1).unsqueeze(1)
        output = self.head((attention[:, 0] @ tokens)[:, 0])
        return {"output": output, "attentions": [attention], "grid": self.grid,
                "prefix_tokens": 1, "structure": "joint", "token_order": "tcell"}

    def forward(self, clip):
        return self.attention_record(clip)["output"]


def test_every_map_peaks_at_the_evidence_token():
    t, y, x = 1, 2, 3                         # token (t, y, x) of the 2 x 4 x 4 grid
    model = OneTokenModel(k=t * 16 + y * 4 + x).eval()
    clip = torch.zeros(1, 3, 4, 32, 32)
    clip[:, :, 2:4, 16:24, 24:32] = 1.0       # the content of that token's tubelet
    clip[:, :, 0:2, 0:8, 0:8] = 2.0           # brighter content the model does not read
    reader = partial(read_tubelet_tokens, tubelet=(2, 8, 8), prefix_tokens=1)
    maps = {
        "grad_cam": cam.grad_cam(_read(model, "tokens", reader), clip, 1, target_layer="tokens"),
        "layer_cam": cam.layer_cam(_read(model, "tokens", reader), clip, 1, target_layer="tokens"),
        "rollout": attention_rollout(model, clip, 1),
        "gradient": attention_gradient(model, clip, 1),
    }
    for name, result in maps.items():
        assert result.shape == (1, 1, 4, 32, 32)
        peak = np.unravel_index(int(result.flatten().argmax()), (4, 32, 32))
        assert peak[0] in (2, 3) and 16 <= peak[1] < 24 and 24 <= peak[2] < 32, (name, peak)
    # Rollout by hand: the class row of 0.5 A + 0.5 I puts 0.5 on the class and 0.5 on k.
    with torch.no_grad():
        matrices = layer_matrices(model.attention_record(clip), lambda a: a.mean(1), 1)
    row = rollout_relevance(matrices, torch.eye(33)[:1])
    assert row[0, 0] == pytest.approx(0.5) and row[0, 1 + t * 16 + y * 4 + x] == pytest.approx(0.5)


def test_windowed_and_pooled_attention_is_refused():
    from torchvision.models import video as tv_video
    from torchvision.models.video import mvit as tv_mvit
    torch.manual_seed(0)
    swin = tv_video.swin3d_t(weights=None).eval()
    captured = {}
    with mock.patch.object(tv_mvit, "_mvit", lambda **kwargs: captured.update(kwargs)):
        tv_video.mvit_v2_s()
    captured.pop("weights"), captured.pop("progress")
    mvit = tv_mvit.MViT(**{**captured, "spatial_size": (32, 32), "temporal_size": 2}).eval()
    for model, word in ((swin, "SwinTransformer3d"), (mvit, "MViT")):
        for method in (attention_rollout, attention_gradient):
            with pytest.raises(ValueError, match=f"not defined for {word}"):
                method(model, torch.zeros(1, 3, 2, 32, 32), 0)
    with pytest.raises(ValueError, match="exposes no attention probabilities"):
        attention_rollout(nn.Conv3d(3, 2, 1), torch.zeros(1, 3, 2, 8, 8), 0)


# ------------------------------------------------------------------------- Hugging Face
@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    from tests.test_transformers import save_tiny
    from models.hf import load_hf_model
    root = tmp_path_factory.mktemp("hf_attention")
    return {kind: load_hf_model(save_tiny(kind, root / kind))[0]
            for kind in ("videomae", "vivit", "timesformer")}


def _joint_attentions(model, clip):
    inputs = clip.transpose(1, 2)
    output = model.hf(pixel_values=inputs, output_attentions=True)
    return output.logits, list(output.attentions)


@pytest.mark.parametrize("kind", ["videomae", "vivit"])
def test_hf_rollout_and_gradient_equal_an_independent_computation(tiny_hf, kind):
    model = tiny_hf[kind]
    clip = torch.randn(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, attentions = _joint_attentions(model, clip)
    product = torch.eye(attentions[0].shape[-1])
    for a in attentions:
        product = rownorm_residual(a[0].mean(0)) @ product
    prefix = 1 if kind == "vivit" else 0
    row = product[0] if prefix else product.mean(0)
    coarse = row[prefix:].reshape(1, 1, 2, 4, 4)
    expected = F.interpolate(coarse, size=(4, 32, 32), mode="trilinear", align_corners=False)
    assert torch.allclose(attention_rollout(model, clip, 0), expected, atol=1e-6)
    # Gradient-weighted: R = I, R += mean_h(relu(dA * A)) R, layer by layer.
    with torch.enable_grad():
        logits, attentions = _joint_attentions(model, clip)
        grads = torch.autograd.grad(logits[0, 2], attentions)
    relevance = torch.eye(attentions[0].shape[-1])
    for a, g in zip(attentions, grads):
        relevance = relevance + (g * a).clamp(min=0)[0].mean(0) @ relevance
    row = relevance[0] if prefix else relevance.mean(0)
    expected = F.interpolate(row[prefix:].reshape(1, 1, 2, 4, 4), size=(4, 32, 32),
                             mode="trilinear", align_corners=False)
    got = attention_gradient(model, clip, 2)
    assert torch.allclose(got, expected, atol=1e-6) and got.amax() > got.amin()


def test_timesformer_divided_attention_record_and_maps(tiny_hf):
    model = tiny_hf["timesformer"]
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        record = attention_record(model, clip)
    assert record["structure"] == "divided" and len(record["attentions"]) == 2
    layer = record["attentions"][0]
    assert layer["temporal"].shape == (2 * 16, 2, 4, 4)
    assert layer["spatial"].shape == (2 * 4, 2, 17, 17)
    for encoder_layer in model.hf.timesformer.encoder.layer:   # the recording hooks are gone
        assert not encoder_layer.temporal_attention._forward_hooks
        assert not encoder_layer.temporal_attention._forward_pre_hooks
    with torch.no_grad():
        assert torch.allclose(model(clip), record["output"])
    for method in (attention_rollout, attention_gradient):
        info = {}
        maps = method(model, clip, torch.tensor([0, 1]), info=info)
        assert maps.shape == (2, 1, 4, 32, 32) and maps.amin() >= 0
        assert info["attention_matrices"] == 4 and info["layer_grid"] == "4x4x4"
    # Rollout rows stay probability distributions: on the token grid the patch relevance of
    # the class row sums to less than 1 (the rest stays on the class token).
    record_grid = model.token_grid(clip.shape)
    assert record_grid == (4, 4, 4)


# ---------------------------------------------------------------------- demo transformer
TEST_SEED = 4242


@pytest.fixture(scope="module")
def demo():
    from models import get_model_spec
    return get_model_spec("demo_transformer").load(None, "synthetic")


def test_demo_transformer_checkpoint_and_accuracy(demo):
    from models.demo import CHECKPOINT_DIR
    from utils.demo.train import clips_to_input
    from utils.demo.synthetic import SyntheticConfig, class_names, generate_arrays
    from models import get_model_spec
    spec = get_model_spec("demo_transformer")
    assert spec.pretrain_datasets == ("synthetic",) and spec.class_names("synthetic") == class_names()
    assert (CHECKPOINT_DIR / "demo_transformer.pt").stat().st_size < 2_000_000
    batch = generate_arrays(64, TEST_SEED, SyntheticConfig(partial_fraction=0.5))
    with torch.no_grad():
        logits = demo(clips_to_input(batch["frames"]))
    assert (logits.argmax(1).numpy() == batch["labels"]).mean() >= 0.95


def test_demo_transformer_attention_points_at_the_circle(demo):
    from models.demo_transformer import read_tokens_with_class_token
    from utils.demo.train import clips_to_input
    from utils.evaluation.metrics import pointing_chance, pointing_game
    from utils.demo.synthetic import SyntheticConfig, boxes_from_masks, generate_arrays
    batch = generate_arrays(6, TEST_SEED + 1, SyntheticConfig(partial_fraction=0.0))
    boxes = [boxes_from_masks(masks) for masks in batch["masks"]]
    clip = clips_to_input(batch["frames"])
    labels = torch.from_numpy(batch["labels"])
    maps = {"rollout": attention_rollout(demo, clip, labels),
            "gradient": attention_gradient(demo, clip, labels),
            "grad_cam": cam.grad_cam(_read(demo, "blocks.0", read_tokens_with_class_token), clip,
                                     labels, target_layer="blocks.0")}
    chance = np.mean([pointing_chance(b, (112, 112)) for b in boxes])
    for name, result in maps.items():
        assert result.shape == (6, 1, 16, 112, 112)
        score = np.mean([pointing_game(result[i, 0].numpy(), boxes[i]) for i in range(6)])
        assert score > chance + 0.3, (name, score, chance)


def test_demo_transformer_training_is_deterministic():
    from utils.demo.train import TrainSettings
    from utils.demo.train_transformer import DEMO_3DCNN_CHECKPOINT, train
    from utils.demo.synthetic import SyntheticConfig
    settings, config = TrainSettings(steps=2, batch_size=2), SyntheticConfig()
    first = train(settings, seed=3, config=config, stem_from=DEMO_3DCNN_CHECKPOINT).state_dict()
    second = train(settings, seed=3, config=config, stem_from=DEMO_3DCNN_CHECKPOINT).state_dict()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    # The stem started from demo_3dcnn's features (then moved by two steps).
    start = torch.load(DEMO_3DCNN_CHECKPOINT, weights_only=True)["state_dict"]
    assert torch.allclose(first["stem.conv1.conv.weight"], start["features.conv1.conv.weight"],
                          atol=0.05)
    from models.demo_transformer import build_demo_transformer
    torch.manual_seed(3)
    assert not torch.equal(first["head.weight"], build_demo_transformer().state_dict()["head.weight"])
