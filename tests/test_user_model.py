"""Your own model (models/user.py): builders, checkpoints, class counts, input layouts."""
from __future__ import annotations

import argparse
import pathlib
import textwrap

import pytest
import torch
from torch import nn

from models.registry import ModelSpec, WeightsUnavailableError
from models.user import (INPUT_LAYOUTS, KINETICS_MEAN, LayoutAdapter, load_checkpoint_into,
                         load_user_builder, read_state_dict, user_model_spec)

MODEL_FILE = textwrap.dedent('''
    import torch
    from torch import nn

    class TinyNet(nn.Module):
        def __init__(self, num_classes=3):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv3d(3, 4, 3, padding=1), nn.ReLU(),
                nn.Conv3d(4, 6, 3, stride=(1, 2, 2), padding=1), nn.ReLU())
            self.head = nn.Linear(6, num_classes)

        def forward(self, clip):
            return self.head(self.features(clip).mean((2, 3, 4)))

    def build():
        return TinyNet()

    def build_five():
        return TinyNet(5)

    def broken():
        raise RuntimeError("no GPU here\\nsecond line of a long traceback")

    def not_a_model():
        return 42
''')


class PoisonedPayload:
    """Unpickling this calls ``Path.touch(marker)``: a stand-in for code run by a checkpoint."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "my_model.py"
    path.write_text(MODEL_FILE)
    return path


def _reference_net(model_file, seed=0):
    built = load_user_builder(f"{model_file}:build")
    torch.manual_seed(seed)
    for parameter in built.parameters():
        nn.init.normal_(parameter, std=0.3)
    return built.eval()


def _save_wrapped(model, path, **extra):
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3, **extra}, path)


def test_builder_from_file_and_checkpoint_with_prefix_and_wrapping(model_file, tmp_path):
    reference = _reference_net(model_file)
    checkpoint = tmp_path / "ckpt.pth"
    _save_wrapped(reference, checkpoint, args=argparse.Namespace(lr=0.1, name="run"))
    classes = tmp_path / "classes.txt"
    classes.write_text("run\nwalk\njump\n")
    spec = user_model_spec(f"{model_file}:build", weights=checkpoint, classes_file=classes)
    assert isinstance(spec, ModelSpec)
    assert (spec.resize, spec.crop, spec.clip_length) == (128, 112, 16)
    assert tuple(spec.mean) == KINETICS_MEAN
    assert spec.target_layer == "features.2"  # the last convolution
    assert spec.class_names("custom") == ["run", "walk", "jump"]
    model = spec.load(None, "custom")
    clip = torch.randn(2, 3, 4, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(clip), reference(clip), atol=1e-6)
        # a fresh build without the checkpoint differs, so the weights really were loaded
        assert not torch.allclose(load_user_builder(f"{model_file}:build").eval()(clip),
                                  reference(clip), atol=1e-3)


def test_package_module_builder(model_file, monkeypatch):
    monkeypatch.syspath_prepend(str(model_file.parent))
    built = load_user_builder("my_model:build_five")
    assert isinstance(built, nn.Module) and built.head.out_features == 5


def test_flags_override_defaults_and_names_without_classes(model_file):
    spec = user_model_spec(f"{model_file}:build_five", resize=64, crop=32, mean=(0.5, 0.5, 0.5),
                           std=(0.2, 0.2, 0.2), clip_length=8, target_layer="features.0",
                           input_layout="NCTHW")
    assert (spec.resize, spec.crop, spec.clip_length, spec.target_layer) == (64, 32, 8,
                                                                             "features.0")
    assert tuple(spec.mean) == (0.5, 0.5, 0.5) and tuple(spec.std) == (0.2, 0.2, 0.2)
    assert spec.class_names("custom") == [f"class {i}" for i in range(5)]
    with pytest.warns(UserWarning, match="no --weights"):
        spec.load(None, "custom")


def test_class_count_mismatch_is_one_line(model_file, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("a\nb\n")
    with pytest.raises(ValueError) as error:
        user_model_spec(f"{model_file}:build", classes_file=classes)
    message = str(error.value)
    assert "3 outputs" in message and "2 classes" in message and "\n" not in message


@pytest.mark.parametrize("builder, expected", [
    ("broken", "the builder raised RuntimeError: no GPU here"),
    ("not_a_model", "returned int"),
    ("missing", "has no function 'missing'"),
])
def test_builder_errors_are_one_line_and_name_the_file(model_file, builder, expected):
    with pytest.raises(ValueError) as error:
        load_user_builder(f"{model_file}:{builder}")
    message = str(error.value)
    assert expected in message and str(model_file) in message and "\n" not in message


def test_import_errors(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import not_a_real_package_xyz\n")
    with pytest.raises(ValueError, match="importing .*bad.py failed: ModuleNotFoundError"):
        load_user_builder(f"{bad}:build")
    with pytest.raises(ValueError, match="does not exist"):
        load_user_builder(f"{tmp_path / 'nope.py'}:build")
    with pytest.raises(ValueError, match="path/to/file.py:function"):
        load_user_builder(str(bad))
    with pytest.raises(ValueError, match="importing not_a_real_package_xyz.models failed"):
        load_user_builder("not_a_real_package_xyz.models:build")


def test_checkpoint_key_mismatch_is_summarised(model_file, tmp_path):
    reference = _reference_net(model_file)
    state = reference.state_dict()
    state.pop("head.bias")
    state["extra.weight"] = torch.zeros(1)
    state["head.weight"] = torch.zeros(7, 6)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsUnavailableError) as error:
        load_checkpoint_into(_reference_net(model_file), path)
    message = str(error.value)
    assert "1 missing keys (head.bias)" in message
    assert "1 unexpected keys (extra.weight)" in message
    assert "head.weight (7, 6) vs (3, 6)" in message
    assert "\n" not in message and len(message) < 400


def test_checkpoint_never_runs_code(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "poisoned.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": PoisonedPayload(marker)}, path)
    with pytest.raises(WeightsUnavailableError, match="tensor-only"):
        read_state_dict(path)
    assert not marker.exists()
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        read_state_dict(tmp_path / "missing.pth")


def test_model_and_net_wrappers(tmp_path):
    for wrapper in ("model", "net"):
        path = tmp_path / f"{wrapper}.pth"
        torch.save({wrapper: {"module.a": torch.ones(2)}}, path)
        assert list(read_state_dict(path)) == ["a"]


class Recorder(nn.Module):
    """Returns a fixed linear read-out of whatever it is given, so layouts can be compared."""

    def __init__(self, size: int):
        super().__init__()
        torch.manual_seed(1)
        self.weight = nn.Parameter(torch.randn(size, 2))
        self.seen = None

    def forward(self, x):
        self.seen = x
        return x.flatten(1) @ self.weight


@pytest.mark.parametrize("layout", INPUT_LAYOUTS)
def test_layouts_feed_the_permuted_or_folded_clip(layout):
    n, c, t, h, w = 2, 3, 4, 5, 6
    clip = torch.randn(n, c, t, h, w)
    if layout == "NCTHW":
        expected_input = clip
    elif layout == "NTCHW":
        expected_input = torch.stack([clip[:, :, i] for i in range(t)], dim=1)
    else:  # frames stacked along channels: channel t*C + c
        expected_input = torch.cat([clip[:, :, i] for i in range(t)], dim=1)
        assert torch.equal(expected_input[:, 1 * c + 2], clip[:, 2, 1])
    model = Recorder(c * t * h * w)
    adapter = LayoutAdapter(model, layout)
    output = adapter(clip)
    assert torch.equal(model.seen, expected_input)
    assert torch.allclose(output, model(expected_input))


def test_layout_target_layer_and_unknown_layout_refused(model_file):
    spec = user_model_spec(f"{model_file}:build", input_layout="NCTHW", target_layer="features.2")
    assert spec.target_layer == "features.2"
    with pytest.raises(ValueError, match="unknown input layout"):
        LayoutAdapter(nn.Identity(), "NHWC")
    with pytest.raises(ValueError, match="unknown --input_layout"):
        user_model_spec(f"{model_file}:build", input_layout="TNCHW")


def test_frame_model_with_ntchw_layout(tmp_path):
    path = tmp_path / "frames.py"
    path.write_text(textwrap.dedent('''
        from torch import nn

        class PerFrame(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3, padding=1)
                self.head = nn.Linear(4, 2)

            def forward(self, frames):  # (N, T, C, H, W)
                n, t = frames.shape[:2]
                features = self.conv(frames.flatten(0, 1)).mean((2, 3))
                return self.head(features.view(n, t, -1).mean(1))

        def build():
            return PerFrame()
    '''))
    spec = user_model_spec(f"{path}:build", input_layout="NTCHW", crop=16, clip_length=4)
    # The layout is the model adapter's business: layer names stay the network's own.
    assert spec.target_layer == "conv" and spec.input_layout == "NTCHW"
    assert spec.class_names("custom") == ["class 0", "class 1"]
    with pytest.warns(UserWarning):
        network = spec.load(None, "custom")
    adapter = spec.adapter(network)
    clip = torch.randn(1, 3, 4, 16, 16)
    with torch.no_grad():
        assert torch.allclose(adapter(clip), network(clip.transpose(1, 2)))
    from vis_methods import explain
    maps = explain("grad_cam", adapter, clip, 1).maps
    assert maps.shape == (1, 1, 4, 16, 16)


def test_builder_returning_a_spec_keeps_it_with_flag_overrides(tmp_path, model_file):
    path = tmp_path / "spec_model.py"
    path.write_text(textwrap.dedent(f'''
        import importlib.util
        from models.registry import ModelSpec

        def _tiny():
            spec = importlib.util.spec_from_file_location("tiny_user_net", {str(model_file)!r})
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module.build()

        def _load(weights_file, dataset):
            import torch
            model = _tiny()
            if weights_file is not None:
                model.load_state_dict(torch.load(weights_file, weights_only=True))
            return model.eval()

        def build():
            return ModelSpec(name="mine", load=_load, class_names=lambda d: ["x", "y", "z"],
                             clip_length=4, resize=40, crop=32, mean=(0.5, 0.5, 0.5),
                             std=(0.5, 0.5, 0.5), target_layer="features.0")
    '''))
    spec = user_model_spec(f"{path}:build")
    assert (spec.name, spec.clip_length, spec.crop, spec.target_layer) == ("mine", 4, 32,
                                                                           "features.0")
    reference = _reference_net(model_file)
    weights = tmp_path / "plain.pth"
    torch.save(reference.state_dict(), weights)
    classes = tmp_path / "classes.json"
    classes.write_text('["p", "q", "r"]')
    spec = user_model_spec(f"{path}:build", weights=weights, classes_file=classes, crop=24,
                           target_layer="features.2")
    assert (spec.crop, spec.resize, spec.target_layer) == (24, 40, "features.2")
    assert spec.class_names("any") == ["p", "q", "r"]
    clip = torch.randn(1, 3, 4, 24, 24)
    with torch.no_grad():
        assert torch.allclose(spec.load(None, "any")(clip), reference(clip), atol=1e-6)
