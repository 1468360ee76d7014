"""Views inside the network (vis_methods/views/inside.py, drawn by utils/render/views.py,
written by utils/pipeline/views.py) checked against hand-built cases: filters drawn in norm
order, a planted colour detector found at the right place, the demo model's feature space
separating the classes, a class model the demo model believes; every figure names its model,
layer and class."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from models import get_model_spec
from utils.evaluation.synthetic_eval import model_input
from utils.demo.synthetic import SyntheticConfig, generate_clip, load_frames, load_ground_truth
from utils.pipeline import views as pipeline
from utils.render import views as render
from vis_methods.views import inside

ROOT = Path(__file__).resolve().parent.parent
SYNTHETIC = ROOT / "test_data" / "synthetic"


def _state(model: nn.Module):
    return ([p.requires_grad for p in model.parameters()], [m.training for m in model.modules()])


# ------------------------------------------------------------------------------ filters
class _TwoConvs(nn.Module):
    def __init__(self, first: nn.Module, second: nn.Module):
        super().__init__()
        self.stem = first
        self.later = second


def test_filters_are_drawn_largest_norm_first_with_per_kernel_scaling(tmp_path):
    conv = nn.Conv3d(3, 4, (2, 3, 3), bias=False)
    # kernel c: one non-zero voxel (colour, time slice, row, col) of value v; norm |v|.
    planted = {0: (1.0, (0, 0, 0, 0)), 1: (3.0, (1, 1, 2, 1)),
               2: (-2.0, (2, 0, 1, 2)), 3: (0.5, (0, 1, 0, 2))}
    with torch.no_grad():
        conv.weight.zero_()
        for c, (value, (colour, t, y, x)) in planted.items():
            conv.weight[c, colour, t, y, x] = value
    model = _TwoConvs(conv, nn.Conv3d(4, 4, 1))
    before = conv.weight.detach().clone()
    result = inside.filters(model)
    order = result.order
    assert order.tolist() == [1, 2, 0, 3]
    assert torch.equal(conv.weight, before)
    assert pipeline.write_filters(result, tmp_path, "toy_net") == ["filters.png", "filters.csv"]
    table = pd.read_csv(tmp_path / "filters.csv")
    assert table["channel"].tolist() == [1, 2, 0, 3]
    assert np.allclose(table["l2_norm"], [3.0, 2.0, 1.0, 0.5])

    image = np.asarray(Image.open(tmp_path / "filters.png").convert("RGB"))
    drawing = render.filters_picture(result, "toy_net")
    assert np.array_equal(image, drawing.picture)        # the file is the drawing, losslessly
    layout = render.filter_grid_layout(4, 2, 3, 3)
    sheet_top, sheet_left = drawing.offset["sheet"]
    assert image.shape[0] == sheet_top + layout["size"][0]
    assert image.shape[1] >= sheet_left + layout["size"][1]
    scale = layout["scale"]
    # The figure says what it shows: layer, model, order and the norms' range.
    assert drawing.texts[0] == "filters of stem   model: toy_net"
    assert drawing.says("largest L2 norm first") and drawing.says("3 (#1) down to 0.5 (#4)")
    assert drawing.says("time slices t = 0..1") and drawing.says("#1")

    def pixel(rank, t, y, x):
        top, left = layout["origin"](rank)
        row = sheet_top + top + y * scale + scale // 2
        col = sheet_left + left + t * (3 * scale + render.FILTER_GAP) + x * scale + scale // 2
        return image[row, col].tolist()

    # Rank 0 is kernel 1: its only voxel (green, slice 1, row 2, col 1) is the brightest
    # value, mapped to 1; every other value of the kernel is its minimum, 0.
    assert pixel(0, 1, 2, 1) == [0, 255, 0]
    assert pixel(0, 1, 2, 2) == [0, 0, 0] and pixel(0, 0, 2, 1) == [0, 0, 0]
    # Rank 1 is kernel 2, negative: its voxel is the minimum (0) and the rest the maximum (1).
    assert pixel(1, 0, 1, 2) == [255, 255, 0]
    assert pixel(1, 0, 0, 0) == [255, 255, 255]
    # Rank 2 is kernel 0 (red voxel at slice 0, row 0, col 0), rank 3 kernel 3 (red, slice 1).
    assert pixel(2, 0, 0, 0) == [255, 0, 0]
    assert pixel(3, 1, 0, 2) == [255, 0, 0] and pixel(3, 0, 0, 2) == [0, 0, 0]


def test_filters_of_a_2d_stem_and_a_named_layer(tmp_path):
    stem = nn.Conv2d(3, 2, 5, bias=False)
    with torch.no_grad():
        stem.weight.zero_()
        stem.weight[0, 2, 4, 4] = 0.1
        stem.weight[1, 0, 0, 0] = 5.0
    model = _TwoConvs(stem, nn.Conv2d(2, 3, 1))
    result = inside.filters(model)
    assert result.order.tolist() == [1, 0]
    drawing = render.filters_picture(result, "toy_net")
    image = drawing.picture
    layout = render.filter_grid_layout(2, 1, 5, 5)
    top, left = layout["origin"](1)
    sheet_top, sheet_left = drawing.offset["sheet"]
    scale = layout["scale"]
    assert image[sheet_top + top + 4 * scale, sheet_left + left + 4 * scale].tolist() == [0, 0, 255]
    assert drawing.says("one time slice") and drawing.says("colour (RGB)")
    # A named layer with one input channel per kernel... here 2, drawn in grey.
    named = inside.filters(model, layer="later")
    norms = model.later.weight.detach().flatten(1).norm(dim=1).numpy()
    assert named.order.tolist() == np.argsort(-norms, kind="stable").tolist()
    assert render.filters_picture(named, "toy_net").says("filters of later   model: toy_net")
    with pytest.raises(ValueError, match="not a Conv2d or Conv3d"):
        inside.filters(nn.Sequential(nn.Linear(2, 2)), layer="0")


# --------------------------------------------------------------------------- activations
class _FrameNet(nn.Module):
    """Frame CNN on (N*T, C, H, W), frames ordered n*T+t."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.head = nn.Linear(5, 2)

    def forward(self, clip):
        n, c, t, h, w = clip.shape
        frames = clip.transpose(1, 2).reshape(n * t, c, h, w)
        features = self.conv(frames).relu().mean((2, 3)).view(n, t, -1).mean(1)
        return self.head(features)


def test_activations_top_channels_match_a_direct_computation(tmp_path):
    torch.manual_seed(0)
    model = _FrameNet()
    clip = torch.rand(1, 3, 6, 16, 16)
    state = _state(model)
    result = inside.activations(model, clip, "conv", k=3)
    channels, means = result.channels, result.means
    with torch.no_grad():
        frames = clip.transpose(1, 2).reshape(6, 3, 16, 16)
        expected = model.conv(frames).mean((0, 2, 3))
    top = torch.argsort(expected, descending=True)[:3]
    assert channels.tolist() == top.tolist()
    assert np.allclose(means, expected[top].numpy(), atol=1e-6)
    assert _state(model) == state
    # display maps: the positive part over each channel's own maximum over the clip
    with torch.no_grad():
        maps = model.conv(frames)[:, top].permute(1, 0, 2, 3).clamp(min=0)    # (k, T, H, W)
    peak = maps.flatten(1).amax(1).view(-1, 1, 1, 1)
    assert np.allclose(result.display, (maps / peak).numpy(), atol=1e-5)
    assert pipeline.write_activations(result, tmp_path, "a_activations", "frame_net", "clip x",
                                      "waving") == ["a_activations.png"]
    with Image.open(tmp_path / "a_activations.png") as image:
        assert image.size[0] > 500
    drawing = render.activations_figure(result, "frame_net", "clip x", "waving")
    assert drawing.says("frame_net") and drawing.says("label: waving")
    assert drawing.says("of conv by mean activation") and drawing.says("frame t")
    with pytest.raises(ValueError, match="frames_rgb"):
        inside.activations(model, clip, "conv", frames_rgb=np.zeros((5, 16, 16, 3)))


# ----------------------------------------------------------------------------- top clips
class _RedDetector(nn.Module):
    """Channel 0 fires only on (nearly) pure red pixels: relu(R - 4G - 4B - 0.9); the layer
    ``features.2`` pools it to a (T/2, H/4, W/4) grid."""

    def __init__(self):
        super().__init__()
        conv = nn.Conv3d(3, 2, 1)
        with torch.no_grad():
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[0, :, 0, 0, 0] = torch.tensor([1.0, -4.0, -4.0])
            conv.bias[0] = -0.9
            conv.weight[1, :, 0, 0, 0] = torch.tensor([0.0, 0.0, 0.01])
        self.features = nn.Sequential(conv, nn.ReLU(), nn.MaxPool3d((2, 4, 4)))
        self.head = nn.Linear(2, 2)

    def forward(self, clip):
        return self.head(self.features(clip).amax((2, 3, 4)))


def test_top_clips_find_the_planted_colour_at_its_place(tmp_path):
    config = SyntheticConfig(frame_size=32, num_frames=8)
    clips = []
    for index in range(5):
        frames = generate_clip(index, seed=3, config=config).frames.copy()
        if index == 2:
            frames[5, 12:16, 20:24] = (255, 0, 0)      # pure red: response 0.1
        if index == 4:
            frames[1, 0:4, 4:8] = (242, 0, 0)          # darker red: response 242/255 - 0.9
        clip = torch.from_numpy(frames).permute(3, 0, 1, 2).float()[None] / 255.0
        clips.append((f"clip{index}", clip, frames))
    clips.append(("broken", torch.zeros(1, 2, 8, 32, 32), None))   # wrong channel count
    clips.append(("unreadable", ValueError("cannot read frame 3"), None))
    failures = []
    model = _RedDetector()
    state = _state(model)
    result = inside.top_clips(model, clips, "features.2", channel=0, top=3, context=0,
                              failures=failures)
    table = result.table
    assert _state(model) == state
    assert result.num_channels == 2 and result.channels == [0]
    assert inside.layer_channels(model, "features.2", (1, 3, 8, 32, 32)) == 2
    assert [name for name, _ in failures] == ["broken", "unreadable"]
    assert "cannot read frame 3" in failures[1][1]
    first, second = table.iloc[0], table.iloc[1]
    assert first["clip"] == "clip2" and first["value"] == pytest.approx(0.1, abs=1e-5)
    # The peak cell (t' 2, y' 3, x' 5) covers frames 4-5, rows 12-15, columns 20-23.
    assert (first["cell_t"], first["cell_y"], first["cell_x"]) == (2, 3, 5)
    assert (first["t"], first["y"], first["x"]) == (5, 14, 22)
    assert (first["t0"], first["t1"], first["y0"], first["y1"], first["x0"], first["x1"]) == \
        (4, 6, 12, 16, 20, 24)
    assert second["clip"] == "clip4"
    assert second["value"] == pytest.approx(242 / 255 - 0.9, abs=1e-5)
    assert (second["t"], second["y"], second["x"]) == (1, 2, 6)
    assert table.iloc[2]["value"] == 0.0      # no other clip holds pure red
    # The crops are the tube's frames: the first row's crop at t=5 holds the planted red square.
    assert result.times[0].tolist() == [4, 5]
    crops = result.crops[0]
    assert crops.shape == (2, 4, 4, 3) and np.allclose(crops[1], [1.0, 0.0, 0.0])
    assert pipeline.write_top_clips(result, tmp_path, "red_net") == ["top_clips.csv",
                                                                     "top_clips_channel0.png"]
    saved = pd.read_csv(tmp_path / "top_clips.csv")
    assert list(saved.columns[:7]) == ["channel", "rank", "clip", "value", "t", "y", "x"]
    assert saved["clip"].tolist() == ["clip2", "clip4", table.iloc[2]["clip"]]
    assert (tmp_path / "top_clips_channel0.png").is_file()
    drawing = render.top_clips_figures(result, "red_net")[0]
    assert drawing.says("channel 0 of features.2 (2 channels)") and drawing.says("red_net")
    assert drawing.says("clip2")
    # Without a channel: the channels with the largest mean over the folder (both here).
    auto = inside.top_clips(model, clips[:5], "features.2", top=2)
    assert sorted(set(auto.table["channel"])) == [0, 1]
    assert sorted(render.top_clips_figures(auto, "red_net")) == [0, 1]
    with pytest.raises(ValueError, match="out of range"):
        inside.top_clips(model, clips[:2], "features.2", channel=7)


# ----------------------------------------------------------------------------- embedding
def _bundled_clips(spec):
    clips, labels = [], []
    for folder in sorted(p for p in SYNTHETIC.iterdir() if p.is_dir()):
        frames = load_frames(folder)
        clips.append((folder.name, model_input(spec, frames), frames))
        labels.append(load_ground_truth(folder)["label"])
    return clips, labels


def _leave_one_out_1nn(points: np.ndarray, labels: np.ndarray) -> float:
    distances = ((points[:, None] - points[None]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    return float((labels[distances.argmin(1)] == labels).mean())


def test_embedding_of_demo_3dcnn_separates_the_four_classes(tmp_path):
    from sklearn.metrics import silhouette_score

    spec = get_model_spec("demo_3dcnn")
    model = spec.load(None, "synthetic")
    clips, labels = _bundled_clips(spec)
    assert len(clips) == 8 and len(set(labels)) == 4
    state = _state(model)
    result = inside.embedding(model, clips, labels=labels)
    assert _state(model) == state
    assert result.source == "input of head" and result.features.shape == (8, 32)
    # The features are the classifier's input: the head applied to them gives the logits.
    with torch.no_grad():
        logits = model(clips[0][1])
        from_features = model.head(torch.as_tensor(result.features[:1], dtype=torch.float32))
    assert torch.allclose(logits, from_features, atol=1e-4)
    truth = np.array(labels)
    feature_accuracy = _leave_one_out_1nn(result.features, truth)
    pca_accuracy = _leave_one_out_1nn(result.pca, truth)
    silhouette = silhouette_score(result.features, truth)
    print(f"demo_3dcnn embedding: leave-one-out 1-NN accuracy {feature_accuracy:.3f} (features), "
          f"{pca_accuracy:.3f} (PCA 2-D); silhouette {silhouette:.3f}")
    # Chance for 1-NN with 2 clips per class: the one other clip of the class is the nearest
    # among 7 at random, 1/7. Bar: at least 6 of 8.
    assert feature_accuracy >= 0.75 and pca_accuracy >= 0.75
    assert silhouette > 0.2
    # PCA against a hand projection on the centred features' top singular vectors.
    centred = result.features - result.features.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    hand = centred @ vt[:2].T
    assert np.allclose(np.abs(result.pca), np.abs(hand), atol=1e-6)
    singular = np.linalg.svd(centred, compute_uv=False) ** 2
    assert np.allclose(result.pca_explained, singular[:2] / singular.sum(), atol=1e-9)
    assert pipeline.write_embedding(result, tmp_path, "demo_3dcnn") == [
        "embedding.csv", "embedding_pca.png", "embedding_tsne.png"]
    drawings = render.embedding_figures(result, "demo_3dcnn")
    for drawing in drawings.values():
        assert drawing.says("model: demo_3dcnn") and drawing.says("of input of head, 8 clips")
        assert all(drawing.says(label) for label in labels)     # the legend names each class
    assert drawings["pca"].says(f"PCA 1 ({result.pca_explained[0]:.0%} of the variance")
    table = pd.read_csv(tmp_path / "embedding.csv")
    assert list(table.columns) == ["clip", "label", "pca_x", "pca_y", "tsne_x", "tsne_y"]
    assert table["clip"].tolist() == [c[0] for c in clips] and table["label"].tolist() == labels
    assert np.allclose(table[["tsne_x", "tsne_y"]].to_numpy(), result.tsne)
    assert (tmp_path / "embedding_pca.png").is_file()
    assert (tmp_path / "embedding_tsne.png").is_file()


def test_embedding_with_three_clips_and_a_recurrent_model(tmp_path):
    spec = get_model_spec("demo_lstm")
    model = spec.load(None, "synthetic")
    clips, labels = _bundled_clips(spec)
    failures = []
    clips = clips[:3] + [("missing", None, None)]
    result = inside.embedding(model, clips, labels=labels[:4], failures=failures)
    assert failures == [("missing", "no clip")]
    assert result.tsne.shape == (3, 2) and np.isfinite(result.tsne).all()
    assert result.source.startswith("hidden_states()")
    with torch.no_grad():
        expected = model.hidden_states(clips[1][1]).mean(1)[0].numpy()
    assert np.allclose(result.features[1], expected, atol=1e-5)
    with pytest.raises(inside.TooFewClips, match="at least 3 clips"):
        inside.embedding(model, clips[:2], labels=labels[:2])


class _ConvHead(nn.Module):
    """Logits from a 1x1x1 convolution over pooled features, as I3D computes them."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv3d(3, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool3d((2, 1, 1))
        self.logits = nn.Conv3d(6, 3, 1)

    def forward(self, clip):
        return self.logits(self.pool(self.features(clip).relu())).mean((2, 3, 4))


def test_embedding_features_of_a_model_without_linear_layers(tmp_path):
    torch.manual_seed(1)
    model = _ConvHead()
    clips = [(f"c{i}", torch.rand(1, 3, 4, 8, 8), None) for i in range(4)]
    result = inside.embedding(model, clips, labels=["a", "b", "a", "b"], method="pca")
    assert result.source == "input of logits averaged over its grid" and result.tsne is None
    with torch.no_grad():
        pooled = model.pool(model.features(clips[2][1]).relu()).mean((2, 3, 4))[0]
    assert np.allclose(result.features[2], pooled.numpy(), atol=1e-6)
    assert pipeline.write_embedding(result, tmp_path, "conv_head") == ["embedding.csv",
                                                                        "embedding_pca.png"]
    table = pd.read_csv(tmp_path / "embedding.csv")
    assert table["tsne_x"].isna().all() and not (tmp_path / "embedding_tsne.png").exists()
    # A named layer: its output averaged over time and space.
    named = inside.embedding(model, clips, labels=None, layer="features", method="pca")
    with torch.no_grad():
        expected = model.features(clips[0][1]).mean((2, 3, 4))[0]
    assert np.allclose(named.features[0], expected.numpy(), atol=1e-6)
    assert named.labels == ["unknown"] * 4


# --------------------------------------------------------------------------- class model
def test_class_model_makes_demo_3dcnn_believe_the_class(tmp_path):
    torch.set_num_threads(1)
    spec = get_model_spec("demo_3dcnn")
    model = spec.load(None, "synthetic")
    model.train()   # the call must use eval mode and give the training flags back
    state = _state(model)
    target = 1
    with torch.no_grad():
        grey = torch.softmax(model.eval()(spec.normalize(torch.full((1, 3, 16, 112, 112), 0.5))),
                             1)[0, target]
    model.train()
    started = time.perf_counter()
    result = inside.class_model(model, target, (3, 16, 112, 112), normalize=spec.normalize,
                                num_iter=60)
    video, probability = result.video, result.probability
    seconds = time.perf_counter() - started
    print(f"class model: p(grey) {float(grey):.3f} -> {probability:.4f} in {seconds:.1f} s")
    assert float(grey) < 0.3 and probability > 0.9
    assert _state(model) == state
    assert video.shape == (3, 16, 112, 112)
    assert 0.0 <= float(video.min()) <= float(video.max()) <= 1.0
    with torch.no_grad():
        check = torch.softmax(model.eval()(spec.normalize(video[None])), 1)[0, target]
    assert float(check) == pytest.approx(probability, abs=1e-5)
    assert len(result.history) == 6 and result.history[0] == pytest.approx(float(grey), abs=0.05)
    names = spec.class_names("synthetic")
    written = pipeline.write_class_model(result, tmp_path, "demo_3dcnn", names)
    stem = f"class_model_{names[target].replace(' ', '_')}"
    assert written == [f"{stem}.gif", f"{stem}.png"]
    with Image.open(tmp_path / f"{stem}.gif") as gif:
        assert gif.n_frames == 16
    sheet, animation = render.class_model_pictures(result, "demo_3dcnn", names[target])
    for drawing in (sheet, animation):
        assert drawing.says(names[target]) and drawing.says("demo_3dcnn")
    assert sheet.says(f"p({names[target]}) = {probability:.3f} after 60 steps")
    # the sheet shows the video's frames unchanged below their labels
    top, left = sheet.offset["frames"]
    frame = (video[:, 0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(sheet.picture[top:top + 112, left:left + 112], frame)
    with Image.open(tmp_path / f"{stem}.png") as image:
        assert np.array_equal(np.asarray(image.convert("RGB")), sheet.picture)
    with pytest.raises(ValueError, match="out of range"):
        inside.class_model(model, 9, (3, 4, 16, 16), mean=spec.mean, std=spec.std, num_iter=1)
    with pytest.raises(ValueError, match="normalize or both"):
        inside.class_model(model, 0, (3, 4, 16, 16), num_iter=1)


def test_class_model_files_are_one_pair_per_class():
    names = ["a b", "a_b", "run", ""]
    assert pipeline.class_model_stem(2, names) == "class_model_run"
    # two names that give the same file name, and a class without one, get their index
    assert pipeline.class_model_stem(0, names) == "class_model_a_b_0"
    assert pipeline.class_model_stem(1, names) == "class_model_a_b_1"
    assert pipeline.class_model_stem(3, names) == "class_model_3"
    assert pipeline.class_model_stem(7, []) == "class_model_7"


# ------------------------------------------------------------------------- data gradient
def test_channel_reduce_max_abs_hand_computed():
    """On a linear model the gradient of class 0 is its weight: max_abs is its largest
    absolute value over the colour channels, per pixel."""
    from vis_methods import explain

    weight = torch.tensor([[-3.0, 1.0], [2.0, -0.5], [0.5, 0.25]]).view(3, 1, 1, 2)

    class Linear(torch.nn.Module):
        def forward(self, x):
            score = (x * weight).sum(dim=(1, 2, 3, 4))
            return torch.stack([score, -score], dim=1)

    clip = torch.rand(1, 3, 1, 1, 2)
    result = explain("grad", Linear(), clip, 0, channel_reduce="max_abs")
    assert result.maps.shape == (1, 1, 1, 1, 2) and not result.signed
    assert result.maps.flatten().tolist() == [3.0, 1.0]


# ------------------------------------------------------------------ names and bad input
def test_a_clip_name_that_is_not_utf8_is_shown_with_backslash_escapes(tmp_path):
    import os
    name = os.fsdecode(b"clip-\xff")              # how Linux hands such a file name to Python
    assert render.readable(name) == "clip-\\xff"
    assert render.readable("ordinary é") == "ordinary é"
    model = _RedDetector()
    clips = []
    for index, clip_name in enumerate([name, "plain"]):
        frames = generate_clip(index, seed=3, config=SyntheticConfig(frame_size=32,
                                                                     num_frames=8)).frames
        clip = torch.from_numpy(frames.copy()).permute(3, 0, 1, 2).float()[None] / 255.0
        clips.append((clip_name, clip, frames))
    result = inside.top_clips(model, clips, "features.2", channel=1, top=2)
    assert pipeline.write_top_clips(result, tmp_path, "red_net")[0] == "top_clips.csv"
    assert "clip-\\xff" in pd.read_csv(tmp_path / "top_clips.csv")["clip"].tolist()
    assert render.top_clips_figures(result, "red_net")[1].says("clip-\\xff")
    assert (tmp_path / "top_clips_channel1.png").stat().st_size > 0
    # the other figures that name clips: temporal sensitivity and activations
    temporal_result = {"target_class": 0, "probabilities": {"original": 0.9, "reversed": 0.2},
                       "predictions": {"original": 0, "reversed": 1}, "verdict": "uses order"}
    drawing = render.temporal_figure(temporal_result, name, "red_net", ["left", "right"])
    assert drawing.says("clip-\\xff: uses order") and drawing.says("predicted: right")
    pipeline.save_drawing(drawing, tmp_path / "temporal.png")
    shown = render.activations_figure(inside.activations(model, clips[0][1], "features.2", k=1),
                                      "red_net", name)
    pipeline.save_drawing(shown, tmp_path / "activations.png")
    assert shown.says("clip-\\xff (label: unknown)")
