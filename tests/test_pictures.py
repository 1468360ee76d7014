"""Pictures and tables that cannot mislead: degenerate maps are stamped and never stretched,
--polarity only for signed maps, legends name the colours drawn, upscaled clips are warned
about, the comparison figure says what it shows, top-k rows carry the target's probability and
rank, and --score rates each map against a random one with the evaluation's own functions."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import main
from tests.conftest import ROOT, write_frames
from utils.evaluation import metrics
from utils.pipeline import stages
from utils.pipeline.settings import RunSettings
from utils.render import figures as vis
from utils.render import outputs
from vis_methods import METHODS

SYNTHETIC = ROOT / "test_data" / "synthetic"
T, H, W = 8, 16, 16


def run_main(args, capsys):
    code = main.main([str(a) for a in args] + ["--no_gpu", "--quiet"])
    return code, capsys.readouterr().err


def _work(raw: np.ndarray, signed: bool = False, method: str = "grad_cam"):
    """A computed clip of random frames with the map ``raw`` ``(1, T, H, W)``."""
    rng = np.random.default_rng(0)
    rgb = torch.from_numpy(rng.random((3, T, H, W)).astype(np.float32))
    clip = stages.ClipInput(None, "clip-a", rgb, rgb[None], H)
    probabilities = torch.tensor([0.7, 0.2, 0.1])
    prediction = stages.Prediction(probabilities.log()[None], probabilities, "ironing", 0.7, None)
    item = stages.OutputSet(method, "clip-a", "", 0, 1, "ironing",
                            torch.as_tensor(raw, dtype=torch.float32), signed, {}, 0.1, 0)
    return stages.ClipWork(clip, "ironing", prediction, [item])


class _Drawn:
    """Keeps every frame grid and comparison figure the writers draw, with its texts."""

    def __init__(self, monkeypatch):
        self.grids, self.comparisons = [], []
        grid, comparison = vis.render_grid_image, outputs.comparison_images

        def record_grid(*args, **kwargs):
            kwargs["texts"] = texts = []
            image = grid(*args, **kwargs)
            self.grids.append((image, texts, args, kwargs))
            return image

        def record_comparison(*args, **kwargs):
            kwargs["texts"] = texts = []
            result = comparison(*args, **kwargs)
            self.comparisons.append((result[0], texts))
            return result

        monkeypatch.setattr(outputs.visualize, "render_grid_image", record_grid)
        monkeypatch.setattr(outputs, "comparison_images", record_comparison)


DEGENERATE = {
    "all zero": np.zeros((1, T, H, W)),
    "constant": np.full((1, T, H, W), 0.25),
    "1e-6 noise": 0.5 + 1e-6 * np.random.default_rng(1).standard_normal((1, T, H, W)),
}


@pytest.mark.parametrize("name", list(DEGENERATE))
def test_degenerate_maps_are_stamped_recorded_and_not_stretched(name, tmp_path, monkeypatch):
    drawn = _Drawn(monkeypatch)
    settings = RunSettings(methods=("grad_cam",), model_name="demo", out_dir=tmp_path,
                           formats=("png",))
    work = _work(DEGENERATE[name])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = stages.finish_clip(work, "demo", settings, {"grad_cam": tmp_path}, None, None,
                                  ["ironing", "knitting", "yoga"])
    problem = rows["grad_cam"][0]["map_problem"]
    expected = "map is all zero" if name == "all zero" else "map is constant"
    assert problem.startswith(expected) and problem.endswith("evidence")
    # warned once for the clip, naming the problem
    assert len(caught) == 1 and problem in str(caught[0].message)
    image, texts, args, _ = drawn.grids[0]
    assert problem in texts                               # the stamp is on the figure
    # the stamp is drawn in red
    assert ((image[..., 0] > 150) & (image[..., 1] < 60) & (image[..., 2] < 60)).sum() > 50
    frames, overlays = args[0], args[1]
    # no overlay pixel differs from its frame: nothing is drawn as evidence, let alone at full strength
    np.testing.assert_array_equal(overlays, vis.to_uint8(frames))
    for mode in vis.NORMALIZATIONS:
        assert vis.normalize_map(DEGENERATE[name][0], mode=mode).max() == 0
    with Image.open(tmp_path / "clip-a.png") as png:
        np.testing.assert_array_equal(np.asarray(png.convert("RGB")), image)


def test_a_map_with_structure_is_not_degenerate():
    ramp = np.linspace(0.0, 1.0, T * H * W).reshape(T, H, W)
    assert vis.map_problem(ramp) is None
    assert vis.map_problem(ramp + 1.0) is None                 # spread 1 of magnitude 2
    assert vis.map_problem(1000.0 + 1e-3 * ramp) is not None   # spread 1e-6 of the magnitude
    # 'none' keeps raw values; robust and minmax reach full scale
    assert vis.normalize_map(0.5 * ramp, mode="none").max() == pytest.approx(0.5)
    assert vis.normalize_map(0.5 * ramp, mode="minmax").max() == pytest.approx(1.0)
    assert vis.normalize_map(0.5 * ramp + 0.25, mode="minmax").min() == pytest.approx(0.0)


UNSIGNED = [m for m, info in METHODS.items() if not info.is_signed(info.options)]
SIGNED = [m for m, info in METHODS.items() if info.is_signed(info.options)]


@pytest.mark.parametrize("polarity", ["negative", "both"])
@pytest.mark.parametrize("method", UNSIGNED)
def test_polarity_of_an_unsigned_method_is_an_error_naming_the_signed_ones(method, polarity, tmp_path,
                                                                          capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--videos_dir", str(SYNTHETIC), "--out_dir", str(tmp_path), "--model",
                   "demo_3dcnn", "--vis_method", method, "--polarity", polarity])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert method in err and "--counterfactual" in err
    named = re.search(r"signed method \(([^)]*)\)", err).group(1).split(", ")
    assert named == SIGNED and "grad_cam" not in named
    assert not any(tmp_path.iterdir())                        # before any clip


def test_signed_legend_colours_are_the_colours_drawn(tmp_path, monkeypatch):
    drawn = _Drawn(monkeypatch)
    raw = np.zeros((1, T, H, W))
    raw[0, :, :4, :4] = 1.0                                   # for the class
    raw[0, :, -4:, -4:] = -1.0                                # against it
    settings = RunSettings(methods=("grad",), model_name="demo", out_dir=tmp_path,
                           formats=("png",), polarity="both")
    stages.finish_clip(_work(raw, signed=True, method="grad"), "demo", settings,
                       {"grad": tmp_path}, None, None, ["ironing", "knitting", "yoga"])
    image, texts, args, kwargs = drawn.grids[0]
    legend = args[6]
    (for_colour, for_text), (against_colour, against_text) = legend
    assert for_text == "red: for ironing" and against_text == "blue: against ironing"
    layout = vis.grid_layout(T, H, W, args[2], legend, True, False, None, fonts=None,
                             alert=kwargs.get("alert"))
    x0, y0, _, _ = layout.overlay_boxes[0]
    scale = layout.scale
    # the pixels drawn at +1 and -1 are the legend's colours (full strength at opacity 1)
    assert tuple(image[y0 + scale, x0 + scale]) == for_colour
    assert tuple(image[y0 + (H - 1) * scale, x0 + (W - 1) * scale]) == against_colour
    # and the legend's swatches show them
    for colour, _, x, y in layout.legend_items:
        assert tuple(image[y + 8, x + 6]) == colour
    joined = " ".join(texts)
    assert "colours: RdBu_r, opacity 1" in joined and "scale: robust (|map| / its 99.5th" in joined


def test_upscaled_clips_warn_once_and_clips_at_the_model_size_do_not(tiny_spec, tmp_path, capsys):
    small = tmp_path / "small"
    for index in range(3):
        write_frames(small / f"ironing-{index}", 8, size=(20, 24), seed=index)
    code, err = run_main(["--videos_dir", small, "--out_dir", tmp_path / "a", "--vis_method",
                          "grad", "--formats", "npy"], capsys)
    assert code == 0, err
    assert err.count("are upscaled") == 1 and "--resize 20" in err, err
    exact = tmp_path / "exact"
    for index in range(2):
        write_frames(exact / f"ironing-{index}", 8, size=(32, 40), seed=index)
    code, err = run_main(["--videos_dir", exact, "--out_dir", tmp_path / "b", "--vis_method",
                          "grad", "--formats", "npy"], capsys)
    assert code == 0, err
    assert "are upscaled" not in err


def test_comparison_figure_has_names_legends_colour_bars_and_every_frame(tmp_path, monkeypatch):
    drawn = _Drawn(monkeypatch)
    rng = np.random.default_rng(3)
    raw = rng.random((1, T, H, W))
    work = _work(raw)
    work.outputs.append(stages.OutputSet("grad", "clip-a", "", 0, 1, "ironing",
                                         torch.as_tensor(rng.standard_normal((3, T, H, W)),
                                                         dtype=torch.float32), True, {}, 0.1, 0))
    work.outputs.append(stages.OutputSet("rise", "clip-a", "", 0, 1, "ironing",
                                         torch.zeros((1, T, H, W)), False, {}, 0.1, 0))
    settings = RunSettings(methods=("grad_cam", "grad", "rise"), model_name="demo_3dcnn",
                           out_dir=tmp_path, formats=("png",))
    folders = {m: tmp_path / m for m in settings.methods}
    for folder in folders.values():
        folder.mkdir()
    with pytest.warns(UserWarning, match="rise map clip-a: map is all zero"):
        stages.finish_clip(work, "demo_3dcnn", settings, folders, tmp_path / "compare", None,
                           ["ironing", "knitting", "yoga"])
    image, texts = drawn.comparisons[0]
    joined = " ".join(texts)
    assert "ironing" in joined and "demo_3dcnn" in joined
    assert "explained: ironing (p 0.70, rank 1)" in joined
    assert "top-3: ironing 0.70, knitting 0.20, yoga 0.10" in texts
    assert all(f"t={t}" in texts for t in range(T))          # every frame
    # a legend per method row, and the empty map says so on its row
    assert texts.count("pale yellow: strongest evidence for ironing") == 3
    assert any(t.startswith("map is all zero") for t in texts)
    # a colour bar per method row: its ticks are written once per row
    assert texts.count("0.5") == 3
    assert (tmp_path / "compare" / "clip-a.png").is_file()


def _demo_adapter():
    from models import get_model_spec
    from utils.pipeline.setup import class_names_for, load_model
    spec = get_model_spec("demo_3dcnn")
    dataset = spec.pretrain_datasets[0]
    names, _ = class_names_for(spec, dataset)
    return load_model(spec, None, dataset, torch.device("cpu"), names, None), names


def test_topk_rows_scores_and_report_on_the_demo_model(tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_main(["--videos_dir", SYNTHETIC, "--out_dir", out, "--model", "demo_3dcnn",
                          "--vis_method", "grad_cam", "--topk", "3", "--formats", "npy",
                          "--score", "deletion,insertion", "--score_steps", "6"], capsys)
    assert code == 0, err
    folder = out / "grad_cam" / "demo_3dcnn"
    summary = pd.read_csv(folder / "summary.csv", keep_default_na=False)
    assert len(summary) == 24
    adapter, names = _demo_adapter()
    from utils.io.clips import ClipSource
    beats_deletion = beats_insertion = 0
    for clip_id, rows in summary.groupby("clip", sort=False):
        source = ClipSource(SYNTHETIC / clip_id, False)
        clip = stages.read_clip(source, clip_id, adapter, adapter.clip_length, torch.device("cpu"))
        with torch.no_grad():
            softmax = adapter(clip.tensor).softmax(dim=1)[0]
        order = softmax.argsort(descending=True).tolist()
        assert rows["target_rank"].tolist() == [1, 2, 3]
        for _, row in rows.iterrows():
            index = names.index(row["target"])
            assert row["target_rank"] == order.index(index) + 1
            assert float(row["target_probability"]) == pytest.approx(float(softmax[index]), abs=1e-4)
            top = [cell.split(":") for cell in row["top5"].split(";")]
            assert [n for n, _ in top] == [names[k] for k in order[:5]]
            assert [float(p) for _, p in top] == pytest.approx(softmax[order[:5]].tolist(), abs=1e-4)
            # the AUCs are the evaluation's own functions on the same (shown) map
            stem = Path(row["outputs"]).stem
            shown = np.maximum(np.load(folder / f"{stem}.npy"), 0)
            deletion, curve = metrics.deletion(adapter, clip.tensor, shown, index, 6)
            insertion, _ = metrics.insertion(adapter, clip.tensor, shown, index, 6)
            assert float(row["deletion_auc"]) == pytest.approx(deletion, abs=1e-4)
            assert float(row["insertion_auc"]) == pytest.approx(insertion, abs=1e-4)
            assert [float(v) for v in row["deletion_curve"].split(";")] == pytest.approx(curve, abs=1e-4)
            random_map = np.random.default_rng(stages.RANDOM_MAP_SEED).random(shown.shape)
            chance, _ = metrics.deletion(adapter, clip.tensor, random_map, index, 6)
            assert float(row["deletion_random_auc"]) == pytest.approx(chance, abs=1e-4)
            assert row["insertion_random_auc"] != ""
        top1 = rows.iloc[0]
        beats_deletion += float(top1["deletion_auc"]) < float(top1["deletion_random_auc"])
        beats_insertion += float(top1["insertion_auc"]) > float(top1["insertion_random_auc"])
    # Grad-CAM on the demo network is faithful on its synthetic clips: it beats a random map
    assert beats_deletion >= 6 and beats_insertion >= 6, (beats_deletion, beats_insertion)
    page = (folder / "index.html").read_text()
    counts = re.search(r'<p class="counts">(.*?)\.', page, re.S).group(1)
    assert counts.startswith("8 clips, 24 rows, 0 clips with failures,")
    mispredicted = int(re.search(r"(\d+) clips mispredicted", counts).group(1))
    assert mispredicted == len({c for c, r in summary.groupby("clip")
                                if r["label"].iloc[0] != r["prediction"].iloc[0]})
    assert "beats the random map" in page
    # the rerun skips every clip and says so
    code, err = run_main(["--videos_dir", SYNTHETIC, "--out_dir", out, "--model", "demo_3dcnn",
                          "--vis_method", "grad_cam", "--topk", "3", "--formats", "npy",
                          "--score", "deletion,insertion", "--score_steps", "6"], capsys)
    assert code == 0
    assert "8 clips: 0 clips done now, 8 skipped as already done, 0 failed" in err


def test_the_figure_carries_top_classes_rank_and_score_curves(tmp_path, monkeypatch):
    drawn = _Drawn(monkeypatch)
    settings = RunSettings(methods=("grad_cam",), model_name="demo", out_dir=tmp_path,
                           formats=("png",))
    work = _work(np.random.default_rng(0).random((1, T, H, W)))
    curve = np.linspace(1.0, 0.0, 7)
    work.outputs[0].target_index = 1
    work.outputs[0].scores = {"deletion": (0.21, curve, 0.55, curve ** 0.3)}
    rows = stages.finish_clip(work, "demo", settings, {"grad_cam": tmp_path}, None, None,
                              ["ironing", "knitting", "yoga"])
    image, texts, *_ = drawn.grids[0]
    assert "label: ironing   prediction: ironing (0.70)   explained: ironing (p 0.20, rank 2)" in texts
    assert "top-3: ironing 0.70, knitting 0.20, yoga 0.10" in texts
    assert any(t.startswith("deletion AUC 0.210 (red), random map 0.550 (grey)") for t in texts)
    # the map's curve is drawn in red
    assert (np.all(image == vis.MAP_CURVE_COLOUR, axis=-1)).sum() > 30
    assert rows["grad_cam"][0]["target_rank"] == 2 and rows["grad_cam"][0]["deletion_auc"] == 0.21


def test_shard_counts_from_one_and_the_log_agrees(tiny_spec, tmp_path, capsys):
    root = tmp_path / "clips"
    for index in range(4):
        write_frames(root / f"ironing-{index}", 8, seed=index)
    code, err = run_main(["--videos_dir", root, "--out_dir", tmp_path / "o", "--vis_method", "grad",
                          "--formats", "npy", "--shard", "2/2"], capsys)
    assert code == 0, err
    assert "(shard 2/2, --shard 2/2)" in err
    summary = pd.read_csv(tmp_path / "o" / "grad" / "i3d" / "summary.csv")
    assert sorted(summary["clip"]) == ["ironing-1", "ironing-3"]
    code, err = run_main(["--videos_dir", root, "--out_dir", tmp_path / "o", "--vis_method", "grad",
                          "--formats", "npy", "--shard", "0/2"], capsys)
    assert code == 2 and "1 <= I <= N" in err
