"""Fine-tuning per view: the network split, learning, determinism, checkpoints, fold isolation.

Everything runs on tiny inputs: EfficientNet-Lite0 (its ImageNet weights) at 32 x 32 with
only the head convolution and the new layer trained, a few epochs, synthetic images or the
synthetic demo corpus written to tmp_path.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import binser.finetune as ft
from binser.backbones import get_backbone
from binser.config import FrontEndConfig
from binser.demo import DemoSpec, make_demo_corpus
from binser.errors import ConfigError, ModelError
from binser.evaluation import folds
from binser.features import SegmentFeatureExtractor
from binser.finetune import (FinetuneSettings, FinetuneWarning, finetune_backbone,
                             finetuned_fold_features, load_finetuned_backbone,
                             load_view_images, network_units,
                             split_network, validation_speakers)
from binser.spectrogram import views_images
from binser.views import binaural_views

NAME = "efficientnet_lite0"
N_CLASSES = 3
SPEAKERS = ("s1", "s2", "s3", "s4")
TINY = FinetuneSettings(trainable="last:1", input_size=32, max_epochs=3, patience=3,
                        lr=0.02, batch_size=8, device="cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these tiny networks gain nothing from more, and on a busy 2-core
    machine two spinning threads per process run ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def toy_data(seed: int = 0, per_speaker: int = 6):
    """Utterances of 1-3 segment images (3, 64, 64) float16 whose class is a bright band
    (rows 20c .. 20c+12) over noise; labels cycle through the classes, 4 speakers."""
    rng = np.random.default_rng(seed)
    images, labels, groups = [], [], []
    for speaker in SPEAKERS:
        for u in range(per_speaker):
            label = u % N_CLASSES
            x = 0.3 * rng.random((int(rng.integers(1, 4)), 3, 64, 64))
            x[:, :, 20 * label: 20 * label + 12, :] += 0.7
            images.append(x.astype(np.float16))
            labels.append(label)
            groups.append(speaker)
    return images, np.array(labels), np.array(groups)


def run(settings: FinetuneSettings = TINY, data=None, **kwargs):
    images, labels, groups = toy_data() if data is None else data
    return finetune_backbone(NAME, None, images, labels, groups, N_CLASSES, settings,
                             progress=False, **kwargs)


def segment_loss(backbone, images, labels) -> float:
    """Mean cross-entropy of the backbone's classifier over every segment (eval mode)."""
    x = np.concatenate(images).astype(np.float32)
    y = torch.as_tensor(np.repeat(labels, [len(a) for a in images]))
    return float(F.cross_entropy(backbone.logits(x).float(), y))


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One fine-tuning run of the toy data, checkpointed: (backbone, history, settings)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    settings = FinetuneSettings(**{**TINY.to_dict(), "checkpoint_dir": str(folder)})
    return (*run(settings), settings)


# ------------------------------------------------------------------ the network split


@pytest.mark.parametrize("name,size,weights", [(NAME, 64, None), ("alexnet", 63, "random")])
def test_units_chain_to_the_model_and_cover_every_weight(name, size, weights):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = get_backbone(name, weights=weights, input_size=size, allow_random=True)
    units, head = network_units(backbone)
    x = backbone.normalise(np.random.default_rng(0).random((2, 3, 64, 64), np.float32))
    with torch.no_grad():
        chained = x
        for unit in units:
            chained = unit.module(chained)
        torch.testing.assert_close(chained, backbone.model(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(head.module(chained), backbone.classifier(chained))
    prefixes = tuple(p for u in units + [head] for p in u.prefixes)
    assert all(k.startswith(prefixes) for k in backbone.model.state_dict())
    assert len(units) == {"efficientnet_lite0": 18, "alexnet": 7}[name]


def test_last_n_trains_the_named_units_only():
    backbone = get_backbone(NAME, input_size=32)
    split = split_network(backbone, "last:2")
    assert split.trainable_units == ["block15", "head_conv", "fc"]
    expected = {k for k in backbone.model.state_dict()
                if k.startswith(("_blocks.15.", "_conv_head.", "_bn1.", "_fc."))}
    assert set(ft.trainable_state(backbone.model, split.trainable_prefixes)) == expected
    assert split_network(backbone, "head").trainable_units == ["fc"]
    assert len(split_network(backbone, "all").prefix) == 0
    with pytest.raises(ConfigError, match="only 18 units"):
        split_network(backbone, "last:19")


# ------------------------------------------------------------------ settings


def test_settings_defaults_presets_and_validation():
    paper = FinetuneSettings()
    assert (paper.batch_size, paper.lr, paper.momentum, paper.max_epochs) == (30, 0.001, 0.9, 300)
    assert paper.trainable == "all"
    reduced = FinetuneSettings.cpu_reduced(seed=3)
    assert (reduced.trainable, reduced.input_size, reduced.seed) == ("last:2", 96, 3)
    assert reduced.max_epochs < paper.max_epochs and reduced.patience < paper.patience
    assert json.loads(json.dumps(reduced.to_dict())) == reduced.to_dict()
    assert "device" not in reduced.training_fingerprint()
    for bad in (dict(trainable="last:0"), dict(trainable="conv"), dict(lr=0),
                dict(batch_size=0), dict(val_fraction=1.0), dict(amp="fp8"),
                dict(device="tpu"), dict(momentum=1.0), dict(max_segments_per_epoch=0)):
        with pytest.raises(ConfigError):
            FinetuneSettings(**bad)


def test_validation_speakers_are_whole_deterministic_and_sized():
    groups = np.repeat([f"spk{i}" for i in range(10)], 3)
    chosen = validation_speakers(groups, 0.2, seed=0)
    assert len(chosen) == 2 and chosen == validation_speakers(groups, 0.2, seed=0)
    assert len(validation_speakers(groups[:15], 0.2, seed=0)) == 1   # 5 speakers -> 1
    assert len(validation_speakers(groups[:6], 0.2, seed=0)) == 1    # 2 speakers -> 1
    assert len(validation_speakers(groups, 0.9, seed=0)) == 9        # never all of them
    assert validation_speakers(groups, 0.0, seed=0) == []
    assert {tuple(validation_speakers(groups, 0.2, s)) for s in range(6)} != {tuple(chosen)}


# ------------------------------------------------------------------ learning


def test_finetuning_lowers_the_training_loss(tuned):
    backbone, history, _ = tuned
    images, labels, groups = toy_data()
    train = np.isin(groups, history["train_speakers"])
    before = get_backbone(NAME, input_size=32)
    ft._seeded_head(before, N_CLASSES, TINY.seed)   # the same initial head
    tr_images = [images[i] for i in np.flatnonzero(train)]
    assert segment_loss(backbone, tr_images, labels[train]) < \
        0.8 * segment_loss(before, tr_images, labels[train])
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert len(history["val_ua"]) == history["epochs_run"] == 3
    assert 1 <= history["best_epoch"] <= 3
    assert history["train_images_per_s"] > 0 and history["seconds"] > 0
    assert history["n_train_segments"] == sum(len(images[i]) for i in np.flatnonzero(train))


def test_validation_ua_is_the_utterance_level_balanced_accuracy(tuned):
    from sklearn.metrics import balanced_accuracy_score

    backbone, history, _ = tuned
    images, labels, groups = toy_data()
    val = np.flatnonzero(np.isin(groups, history["val_speakers"]))
    with torch.no_grad():
        pred = [torch.softmax(backbone.logits(images[i].astype(np.float32)), 1).mean(0)
                .argmax().item() for i in val]
    best = history["val_ua"][history["best_epoch"] - 1]
    assert best == pytest.approx(balanced_accuracy_score(labels[val], pred))
    assert best == max(history["val_ua"])


def test_finetuning_changes_the_features_but_not_the_frozen_layers(tuned):
    backbone, history, _ = tuned
    frozen = get_backbone(NAME, input_size=32)
    assert history["base_weights_id"] == frozen.weights_id != backbone.weights_id
    assert backbone.weights_id == history["weights_id"] and not backbone.model.training
    images = np.concatenate(toy_data()[0][:4]).astype(np.float32)
    assert not np.allclose(backbone.features(images).numpy(), frozen.features(images).numpy(),
                           atol=1e-4)
    base, tuned_state = frozen.model.state_dict(), backbone.model.state_dict()
    for name, value in base.items():
        if not name.startswith(("_conv_head.", "_bn1.", "_fc.")):
            assert torch.equal(tuned_state[name].cpu(), value), name
    assert not torch.equal(tuned_state["_conv_head.weight"].cpu(), base["_conv_head.weight"])


def test_same_seed_same_weights_other_seed_other_weights(tuned):
    again, history = run()                      # no checkpoint: trained afresh
    assert history["from_checkpoint"] is False
    assert again.weights_id == tuned[0].weights_id
    other, _ = run(FinetuneSettings(**{**TINY.to_dict(), "seed": 1, "max_epochs": 1}))
    assert other.weights_id != tuned[0].weights_id


def test_shared_frozen_outputs_train_the_same_network(tuned):
    images, labels, groups = toy_data()
    base = get_backbone(NAME, input_size=32)
    frozen = ft.frozen_outputs(base, "last:1", images)
    assert frozen.values.shape[0] == sum(len(a) for a in images)
    backbone, history = run(frozen=lambda: frozen)
    assert backbone.weights_id == tuned[0].weights_id
    with pytest.raises(ConfigError, match="cover"):      # outputs of other utterances
        run(frozen=frozen.subset(np.arange(5)))
    other = ft.frozen_outputs(base, "last:2", images)    # another frozen part
    with pytest.raises(ConfigError, match="computed by"):
        run(frozen=other)


def test_concatenated_slices_equal_numpy_concatenation():
    rng = np.random.default_rng(1)
    arrays = [rng.random((int(n), 2)) for n in rng.integers(1, 5, size=7)]
    whole = np.concatenate(arrays)
    flat = ft._Concatenated(arrays)
    assert len(flat) == len(whole)
    for start in range(len(whole)):
        for stop in range(start + 1, len(whole) + 1, 3):
            np.testing.assert_array_equal(flat[start:stop], whole[start:stop])


@pytest.mark.parametrize("trainable", ["head", "all"])
def test_head_only_and_whole_network_paths_run(trainable):
    settings = FinetuneSettings(**{**TINY.to_dict(), "trainable": trainable, "max_epochs": 1,
                                   "max_segments_per_epoch": 12})
    backbone, history = run(settings, data=toy_data(per_speaker=2))
    assert history["epochs_run"] == 1 and history["train_segments"] == [12]
    assert history["trainable_units"][-1] == "fc"
    full = sum(p.numel() for p in backbone.model.parameters())
    assert (history["trainable_parameters"] == full) == (trainable == "all")


# ------------------------------------------------------------------ checkpoints


def count_epochs(monkeypatch) -> list[int]:
    """Count calls of the training loop's epoch (the list grows by one per epoch)."""
    calls: list[int] = []
    original = ft._Trainer.train_epoch

    def counting(self, bar):
        calls.append(1)
        return original(self, bar)
    monkeypatch.setattr(ft._Trainer, "train_epoch", counting)
    return calls


def test_a_finished_run_is_loaded_not_trained_again(monkeypatch, tuned):
    first, history, settings = tuned
    folder = Path(settings.checkpoint_dir)
    assert [p.name for p in folder.iterdir()] == [f"{history['key']}.safetensors"]
    epochs = count_epochs(monkeypatch)
    second, again = run(settings)
    assert epochs == [], "the rerun trained again"
    assert second.weights_id == first.weights_id and again["from_checkpoint"] is True
    assert again["train_loss"] == history["train_loss"]
    other = FinetuneSettings(**{**settings.to_dict(), "max_epochs": 1})
    _, third = run(other, data=toy_data(per_speaker=2))   # other settings and data: trained
    assert len(epochs) == 1 and third["key"] != history["key"]


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch, tuned):
    settings = FinetuneSettings(**{**TINY.to_dict(), "checkpoint_dir": str(tmp_path),
                                   "checkpoint_interval_s": 0.0})
    original = ft._Trainer.validate
    calls: list[int] = []

    def interrupted(self):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self)
    monkeypatch.setattr(ft._Trainer, "validate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(settings)
    assert len(list(tmp_path.glob("*.partial.safetensors"))) == 1
    monkeypatch.setattr(ft._Trainer, "validate", original)
    epochs = count_epochs(monkeypatch)
    resumed, history = run(settings)
    assert history["resumed_at_epoch"] == 1 and len(epochs) == 2
    assert resumed.weights_id == tuned[0].weights_id
    assert history["train_loss"] == tuned[1]["train_loss"]
    assert not list(tmp_path.glob("*.partial.safetensors"))


def test_corrupt_or_foreign_checkpoints_are_refused(tmp_path, tuned):
    _, history, settings = tuned
    good = Path(settings.checkpoint_dir) / f"{history['key']}.safetensors"
    fresh = get_backbone(NAME, input_size=32)
    ft._seeded_head(fresh, N_CLASSES, 0)
    prefixes = split_network(fresh, "last:1").trainable_prefixes
    assert ft.load_finetuned(good, fresh, prefixes)["weights_id"] == history["weights_id"]
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.warns(FinetuneWarning, match="unreadable"):   # a cache miss: trained again
        assert ft._from_final(truncated, fresh, TINY, fresh.weights_id,
                              torch.device("cpu")) is None
    with pytest.warns(FinetuneWarning), pytest.raises(ModelError, match="unreadable"):
        ft.load_finetuned(truncated, fresh, prefixes)
    four = get_backbone(NAME, input_size=32)
    ft._seeded_head(four, N_CLASSES + 1, 0)          # a 4-class head does not fit
    with pytest.raises(ModelError, match="wrong tensor shapes"):
        ft.load_finetuned(good, four, prefixes)
    other_base = get_backbone(NAME, input_size=32)
    with torch.no_grad():
        other_base.model._conv_stem.weight.mul_(2)
    other_base.refresh_weights_id()
    ft._seeded_head(other_base, N_CLASSES, 0)
    with pytest.raises(ModelError, match="fine-tuned from"):
        ft.load_finetuned(good, other_base, prefixes)


# ------------------------------------------------------------------ corpus level


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """24 synthetic stereo files: 3 speakers x 4 emotions x 2, at most 1.2 s each."""
    from binser.corpora import corpus

    root = make_demo_corpus(tmp_path_factory.mktemp("demo"),
                            DemoSpec(n_speakers=3, per_emotion=2, max_duration_s=1.2))
    return corpus("folder", root)


def test_load_view_images_decodes_once_and_matches_views_images(demo, monkeypatch):
    import binser.audio

    paths = [u.path for u in demo][:3]
    calls: list[Path] = []
    original = binser.audio.load_audio
    monkeypatch.setattr(binser.audio, "load_audio",
                        lambda path, **kw: calls.append(path) or original(path, **kw))
    images = load_view_images(paths, ("left", "side"), progress=False)
    assert calls == paths
    for i, path in enumerate(paths):
        reference = views_images(binaural_views(original(path)), FrontEndConfig())
        for view in ("left", "side"):
            assert images[view][i].dtype == np.float16
            np.testing.assert_allclose(images[view][i], reference[view], atol=1e-3)


def test_fold_networks_never_see_their_test_speaker(demo, tmp_path, monkeypatch):
    classes = list(demo.labels)
    labels = np.array([classes.index(u.label) for u in demo])
    speakers = [u.speaker for u in demo]
    paths = [u.path for u in demo]
    fold_list = folds(speakers, "loso")
    settings = FinetuneSettings(**{**TINY.to_dict(), "max_epochs": 1})
    epochs = count_epochs(monkeypatch)
    kwargs = dict(views=("side",), settings=settings, cache_dir=tmp_path / "cache",
                  progress=False, n_classes=len(classes))
    features, records = finetuned_fold_features(paths, labels, speakers, fold_list, NAME,
                                                None, **kwargs)
    assert len(epochs) == len(fold_list)
    frozen = get_backbone(NAME, input_size=32)
    frozen_side = SegmentFeatureExtractor(frozen, views=("side",), progress=False
                                          ).extract(paths)["side"]
    ids: dict[tuple, str] = {}
    for k, (train, test) in enumerate(fold_list):
        record = records[k]["side"]
        seen = set(record["train_speakers"]) | set(record["val_speakers"])
        assert record["test_speakers"] == sorted(set(np.array(speakers)[test]))
        assert seen == set(np.array(speakers)[train])
        assert not seen & set(record["test_speakers"])
        assert record["n_train_utterances"] + record["n_val_utterances"] == len(train)
        assert len(features[k]["side"]) == len(paths)
        assert [f.shape for f in features[k]["side"]] == [f.shape for f in frozen_side]
        assert not np.allclose(features[k]["side"][0], frozen_side[0], atol=1e-4)
        # the same training speakers and seed give the same network, others another one
        assert ids.setdefault(tuple(record["train_speakers"]),
                              record["weights_id"]) == record["weights_id"]
    assert len(set(ids.values())) == len(ids) > 1 and frozen.weights_id not in ids.values()
    # a rerun reads the fine-tuned networks and their features from the caches
    again, records_again = finetuned_fold_features(paths, labels, speakers, fold_list, NAME,
                                                   None, **kwargs)
    assert len(epochs) == len(fold_list)
    assert [r["side"]["weights_id"] for r in records_again] == \
        [r["side"]["weights_id"] for r in records]
    assert all(r["side"]["features_from_cache"] for r in records_again)
    for k in range(len(fold_list)):
        for a, b in zip(again[k]["side"], features[k]["side"]):
            np.testing.assert_array_equal(a, b)
    # the features equal those of the whole fine-tuned network run by the extractor
    backbone, history = load_finetuned_backbone(records[0]["side"]["checkpoint"])
    assert backbone.weights_id == history["weights_id"] == records[0]["side"]["weights_id"]
    assert history["train_speakers"] == records[0]["side"]["train_speakers"]
    reference = SegmentFeatureExtractor(backbone, views=("side",), progress=False
                                        ).extract(paths)["side"]
    for a, b in zip(features[0]["side"], reference):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
