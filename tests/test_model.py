"""Trained model folders: train once on a tiny synthetic corpus, then save/load/predict,
safety checks (tampering, truncation, path escapes, versions, no pickle) and the CLI."""
from __future__ import annotations

import fractions
import json
import pickle
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from binser.cli import main
from conftest import TINY_WHISPER, save_tiny_whisper, train_tiny_model
from binser.demo import DemoSpec, make_demo_corpus
from binser.errors import ModelError
from binser.experiment import ExperimentSettings
from binser.cli_format import format_prediction
from binser.model import (MODEL_JSON, Model, content_sha256, file_sha256,
                          train_model)
from binser.spectrogram import n_segments


# ------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(in-memory model, its saved folder, corpus root, settings): trained once."""
    return train_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def wavs(trained):
    return sorted(Path(trained[2]).glob("*/*.wav"))


@pytest.fixture(scope="module")
def loaded(trained):
    return Model.load(trained[1])


@pytest.fixture
def model_copy(trained, tmp_path):
    """A private copy of the saved model folder, free to damage."""
    return Path(shutil.copytree(trained[1], tmp_path / "copy"))


def rewrite_json(folder: Path, change, rehash: tuple[str, ...] = ()) -> None:
    """Edit model.json with ``change(doc)``, refresh the digests of ``rehash`` files and the
    content checksum, so that only the check under test can refuse the model."""
    doc = json.loads((folder / MODEL_JSON).read_text())
    change(doc)
    for name in rehash:
        doc["sha256"][name] = file_sha256(folder / name)
    doc["content_sha256"] = content_sha256(doc)
    (folder / MODEL_JSON).write_text(json.dumps(doc))


def write_mp4(wav: Path, out: Path) -> Path:
    """The wav's audio as an AAC track in an MP4 container (PyAV)."""
    import av

    data, sr = sf.read(wav, dtype="float32", always_2d=True)
    with av.open(str(out), "w") as container:
        stream = container.add_stream("aac", rate=sr)
        stream.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data.T), format="fltp",
                                           layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = sr, 0, fractions.Fraction(1, sr)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return out


# ------------------------------------------------------------------------------ training

def test_model_folder_contents_and_card(trained):
    model, folder = trained[:2]
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["MODEL_CARD.md", "backbone.safetensors", "classifier_left.safetensors",
                     "classifier_mid.safetensors", "classifier_right.safetensors",
                     "classifier_side.safetensors", "model.json"]
    doc = json.loads((folder / MODEL_JSON).read_text())
    assert (doc["format"], doc["format_version"]) == ("binser-model", 1)
    assert doc["labels"] == ["anger", "joy", "neutral", "sadness"]
    assert set(doc["sha256"]) == set(names) - {MODEL_JSON}
    assert set(doc["backbone_files"].values()) == {"backbone.safetensors"}   # saved once
    assert doc["training"]["n_utterances"] == 24 and doc["training"]["n_speakers"] == 3
    card = (folder / "MODEL_CARD.md").read_text()
    assert "Trained on synthetic data" in card and "24 utterances" in card
    assert model.fingerprint == doc["content_sha256"]


def test_fusion_weights_are_nested_choice(trained):
    """The weights equal an independent grid search on out-of-fold scores (all speakers)."""
    from binser.classifier import ViewClassifier
    from binser.corpora import corpus
    from binser.experiment import extract_features
    from binser.fusion import select_weights
    from binser.pooling import make_pooling

    model, _, root, settings = trained
    found = corpus("folder", root)
    layers, _ = extract_features(found, settings, progress=False)   # from the cache
    feats = layers[None]                                           # CNNs: one "layer"
    y = np.array([u.path.parent.name for u in found])            # labels from folders
    groups = np.array([u.path.name.split("_")[0] for u in found])
    oof = {v: ViewClassifier(random_state=0).oof_proba(
        make_pooling("block-max").fit_transform(feats[v]), y, groups) for v in model.views}
    weights, _ = select_weights(oof, y, "left+right+mid+side", model.labels)
    assert weights == model.weights


def test_finetuned_backbones_hook(trained, wavs, tmp_path):
    """Per-view networks (stand-ins for fine-tuned ones): one weights file per view, and
    save -> load -> predict is exact."""
    import copy

    import torch

    model, _, _, settings = trained
    tuned = {}
    for k, view in enumerate(("mid", "side")):
        backbone = copy.deepcopy(model.backbones[view])
        backbone.replace_head(4)
        with torch.no_grad():
            backbone.model._conv_head.weight.mul_(1.0 + 0.1 * (k + 1))
        backbone.refresh_weights_id()
        tuned[view] = backbone
    ft = train_model(settings, tmp_path / "ft", fusion="mid+side", progress=False,
                     finetuned_backbones=tuned)
    names = sorted(p.name for p in (tmp_path / "ft").glob("backbone*"))
    assert names == ["backbone_mid.safetensors", "backbone_side.safetensors"]
    back = Model.load(tmp_path / "ft")
    assert back.mode == "finetuned"
    assert {v: b.weights_id for v, b in back.backbones.items()} == \
        {v: b.weights_id for v, b in tuned.items()}           # heads kept: same identity
    files = wavs[1::11]
    assert [p.to_dict() for p in ft.predict(files, progress=False)] == \
        [p.to_dict() for p in back.predict(files, progress=False)]


# ------------------------------------------------------------------------------ predict

def test_save_load_predict_identical(trained, loaded, wavs):
    model = trained[0]
    files = wavs[::4]
    a = model.predict(files, timeline=True, progress=False)
    b = loaded.predict(files, timeline=True, progress=False)
    assert [p.to_dict() for p in a] == [p.to_dict() for p in b]   # exact equality
    w = model.weights
    for p in a:   # fused scores follow eqs. 8-10 on the per-view scores
        assert p.error is None and p.label == max(p.scores, key=p.scores.get)
        v = {k: np.array([p.view_scores[k][c] for c in model.labels]) for k in model.views}
        s1 = w["alpha"] * v["left"] + (1 - w["alpha"]) * v["right"]
        s2 = w["beta"] * v["mid"] + (1 - w["beta"]) * v["side"]
        fused = w["gamma"] * s1 + (1 - w["gamma"]) * s2
        np.testing.assert_allclose([p.scores[c] for c in model.labels], fused, rtol=1e-12)
        assert sum(p.scores.values()) == pytest.approx(1.0)


def test_wav_flac_mp4_agree(loaded, wavs, tmp_path):
    ref = loaded.predict(wavs[:8], progress=False)
    margin = [sorted(p.scores.values())[-1] - sorted(p.scores.values())[-2] for p in ref]
    wav = wavs[int(np.argmax(margin))]
    data, sr = sf.read(wav, dtype="int16")
    flac = tmp_path / "same.flac"
    sf.write(flac, data, sr, subtype="PCM_16")
    mp4 = write_mp4(wav, tmp_path / "same.mp4")
    p_wav, p_flac, p_mp4 = loaded.predict([wav, flac, mp4], progress=False)
    assert p_flac.scores == pytest.approx(p_wav.scores, abs=1e-6)   # lossless: same samples
    assert p_mp4.error is None and p_mp4.label == p_wav.label == p_flac.label
    assert max(abs(p_mp4.scores[c] - p_wav.scores[c]) for c in p_wav.scores) < 0.08


def test_timeline_segments(loaded, wavs, tmp_path):
    wav = wavs[0]
    n_samples = sf.info(wav).frames
    (p,) = loaded.predict([wav], timeline=True, progress=False)
    frames = 1 + n_samples // 160                       # centred 10 ms frames
    assert len(p.timeline) == n_segments(frames, 64, 30)
    starts = [e["start_s"] for e in p.timeline]
    assert starts == pytest.approx([0.3 * k for k in range(len(starts))])
    assert all(b > a for a, b in zip(starts, starts[1:]))
    for e in p.timeline:
        assert e["end_s"] > e["start_s"] and sum(e["scores"].values()) == pytest.approx(1.0)
    # A file of one segment: its timeline entry IS the utterance score, end clipped.
    data, sr = sf.read(wav, dtype="int16")
    short = tmp_path / "short.wav"
    sf.write(short, data[: sr // 2], sr, subtype="PCM_16")
    (q,) = loaded.predict([short], timeline=True, progress=False)
    assert len(q.timeline) == 1 and q.timeline[0]["scores"] == q.scores
    assert q.timeline[0]["end_s"] == pytest.approx(0.5)


def test_bad_file_skipped_or_raised(trained, loaded, wavs, tmp_path):
    bad = tmp_path / "noise.wav"
    bad.write_bytes(b"this is not audio at all" * 10)
    missing = tmp_path / "missing.flac"
    cache = trained[3].cache_dir       # the training run's features: shared, not recomputed
    good = loaded.predict(wavs[:2], progress=False)
    out = loaded.predict([wavs[0], bad, missing, wavs[1]], progress=False, cache_dir=cache)
    assert [p.error is None for p in out] == [True, False, False, True]
    assert "noise.wav" in out[1].error and "missing.flac" in out[2].error
    assert out[1].label is None and out[1].scores == {}
    for p, q in zip(good, [out[0], out[3]]):
        assert q.scores == pytest.approx(p.scores, abs=1e-6)
    from binser.errors import AudioError

    with pytest.raises(AudioError, match="missing.flac"):
        loaded.predict([wavs[0], missing], progress=False, on_error="fail")


# ------------------------------------------------------------------------------ safety

def test_tampered_classifier_refused(model_copy):
    target = model_copy / "classifier_mid.safetensors"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"classifier_mid\.safetensors.*sha256"):
        Model.load(model_copy)


@pytest.mark.parametrize("name", ["classifier_left.safetensors", "backbone.safetensors"])
def test_truncated_safetensors_refused(model_copy, name):
    target = model_copy / name
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 3])
    with pytest.raises(ModelError, match="sha256"):   # caught by its checksum first
        Model.load(model_copy)
    rewrite_json(model_copy, lambda doc: None, rehash=(name,))
    with pytest.raises(ModelError, match=rf"{name}.*(unreadable|cannot read)"):
        Model.load(model_copy)


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "sub/x", "..", "a\\b"])
def test_path_escape_refused(model_copy, bad):
    def change(doc):
        doc["sha256"][bad] = doc["sha256"].pop("classifier_left.safetensors")
        doc["classifier_files"]["left"] = bad
    rewrite_json(model_copy, change)
    with pytest.raises(ModelError, match="path escape"):
        Model.load(model_copy)


def test_path_escape_in_file_reference_only(model_copy):
    rewrite_json(model_copy,
                 lambda doc: doc["backbone_files"].update(left="../backbone.safetensors"))
    with pytest.raises(ModelError, match="path escape"):
        Model.load(model_copy)


def test_symlink_out_of_folder_refused(model_copy, tmp_path):
    target = model_copy / "classifier_side.safetensors"
    outside = tmp_path / "outside.safetensors"
    shutil.copy(target, outside)                      # same bytes: the checksum would pass
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(ModelError, match="outside the model folder"):
        Model.load(model_copy)


def test_wrong_version_and_format_refused(model_copy):
    doc = json.loads((model_copy / MODEL_JSON).read_text())
    doc["format_version"] = 2
    (model_copy / MODEL_JSON).write_text(json.dumps(doc))
    with pytest.raises(ModelError, match=r"version 2.*reads version 1"):
        Model.load(model_copy)
    doc["format_version"], doc["format"] = 1, "something-else"
    (model_copy / MODEL_JSON).write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="not a binser model"):
        Model.load(model_copy)


def test_edited_model_json_refused(model_copy):
    doc = json.loads((model_copy / MODEL_JSON).read_text())
    doc["fusion"]["weights"]["gamma"] = 0.55   # off the 0.1 grid: always a change
    (model_copy / MODEL_JSON).write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="checksum"):
        Model.load(model_copy)
    (model_copy / MODEL_JSON).write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        Model.load(model_copy)


def test_malformed_arrays_refused(model_copy):
    from safetensors.numpy import load_file, save_file

    target = model_copy / "classifier_right.safetensors"
    arrays = load_file(str(target))
    arrays["coef"] = arrays["coef"][:, :-1].copy()
    save_file(arrays, str(target))
    rewrite_json(model_copy, lambda doc: None, rehash=(target.name,))
    with pytest.raises(ModelError, match=r"classifier_right.*coef.*shape"):
        Model.load(model_copy)


def test_missing_folder_refused(tmp_path):
    with pytest.raises(ModelError, match="not a model folder"):
        Model.load(tmp_path / "nothing")
    with pytest.raises(ModelError, match="model.json"):
        Model.load(tmp_path)


def test_no_pickle_anywhere(trained, wavs, monkeypatch):
    folder = trained[1]
    for path in folder.iterdir():
        head = path.read_bytes()[:16]
        assert not head.startswith(b"\x80") and not head.startswith(b"PK")   # pickle, torch zip
        if path.suffix == ".safetensors":             # 8-byte header length + JSON header
            (size,) = struct.unpack("<Q", head[:8])
            json.loads(path.read_bytes()[8:8 + size])
        elif path.name == MODEL_JSON:
            json.loads(path.read_text())
    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("pickle-based loading was called")

    for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                         (torch, "load")]:
        monkeypatch.setattr(module, name, refuse)
    model = Model.load(folder)
    (p,) = model.predict(wavs[:1], progress=False)
    assert p.label in model.labels


# ------------------------------------------------------------------------------ CLI

def test_cli_predict(trained, wavs, tmp_path, capsys):
    folder = trained[1]
    files = [str(w) for w in wavs[:2]]
    assert main(["predict", str(folder), *files, "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line, f in zip(lines, files):
        assert line.startswith(f + ": ") and line.split()[1] in trained[0].labels
    assert main(["predict", str(folder), files[0], "--json", "--timeline", "--quiet"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["label"] in trained[0].labels and entry["timeline"]


def test_cli_missing_file_clear_message(trained, wavs, tmp_path, capsys):
    folder, missing = trained[1], tmp_path / "gone.wav"
    assert main(["predict", str(folder), str(wavs[0]), str(missing), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "gone.wav: ERROR" in captured.out and "not found" in captured.out
    assert "Traceback" not in captured.err
    assert main(["predict", str(folder), str(missing), "--on-error", "fail", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "gone.wav" in err and "not found" in err and "Traceback" not in err
    assert main(["predict", str(tmp_path / "no_model"), str(wavs[0]), "--quiet"]) == 2
    assert "not a model folder" in capsys.readouterr().err


def test_cli_train_single_view(trained, tmp_path, capsys):
    root = trained[2]
    out = tmp_path / "mid_model"
    code = main(["train", "--dataset", "folder", "--root", str(root), "--out", str(out),
                 "--views", "mid", "--fusion", "none", "--input-size", "32",
                 "--cache-dir", trained[3].cache_dir, "--quiet"])
    assert code == 0 and "model saved" in capsys.readouterr().out
    model = Model.load(out)
    assert model.views == ("mid",) and model.fusion is None
    (p,) = model.predict([next(Path(root).glob("joy/*.wav"))], progress=False)
    assert p.scores == p.view_scores["mid"]


def test_format_prediction_error_line():
    from binser.model import Prediction

    assert format_prediction(Prediction("x.wav", None, error="x.wav: broken")) == \
        "x.wav: ERROR broken"


# ------------------------------------------------------------------------------ fuzzing

from hypothesis import HealthCheck, given, settings as hsettings, strategies as st  # noqa: E402


@pytest.fixture(scope="module")
def fuzz_copy(trained, tmp_path_factory):
    return Path(shutil.copytree(trained[1], tmp_path_factory.mktemp("fuzz") / "m"))


@hsettings(max_examples=30, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(
    st.binary(max_size=300),
    st.builds(lambda n, body: struct.pack("<Q", n) + body,
              st.integers(0, 2**64 - 1), st.binary(max_size=200)),
    st.builds(lambda header: struct.pack("<Q", len(header)) + header,
              st.sampled_from([b'{"coef":{"dtype":"F64","shape":[4,1],"data_offsets":[0,9]}}',
                               b'{"__metadata__":{"a":"b"}}', b'{}', b'[1,2]',
                               b'{"coef":{"dtype":"F64","shape":[99999999999],'
                               b'"data_offsets":[0,8]}}']))))
def test_fuzzed_classifier_file_gives_model_error(fuzz_copy, data):
    """Random bytes and valid-looking safetensors headers, checksum updated: only ModelError."""
    (fuzz_copy / "classifier_left.safetensors").write_bytes(data)
    rewrite_json(fuzz_copy, lambda doc: None, rehash=("classifier_left.safetensors",))
    with pytest.raises(ModelError, match="classifier_left"):
        Model.load(fuzz_copy)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                           lambda c: st.lists(c, max_size=3)
                           | st.dictionaries(st.text(max_size=8), c, max_size=3),
                           max_leaves=8)


@hsettings(max_examples=25, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_fuzzed_model_json_bytes_give_model_error(fuzz_copy, data):
    (fuzz_copy / MODEL_JSON).write_bytes(data)
    with pytest.raises(ModelError, match="model.json"):
        Model.load(fuzz_copy)


@hsettings(max_examples=25, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["labels", "views", "mode", "pooling", "fusion", "frontend",
                            "backbone", "backbone_files", "classifier_files", "classifiers",
                            "sha256"]),
       value=JSON_VALUES)
def test_fuzzed_model_json_fields(trained, fuzz_copy, key, value):
    """A field replaced by any JSON value (checksum recomputed): a model or a ModelError."""
    shutil.copy(trained[1] / "classifier_left.safetensors", fuzz_copy)
    doc = json.loads((trained[1] / MODEL_JSON).read_text())
    doc[key] = value
    doc["content_sha256"] = content_sha256(doc)
    (fuzz_copy / MODEL_JSON).write_text(json.dumps(doc))
    try:
        model = Model.load(fuzz_copy)
    except ModelError:
        return
    # it loaded: then it must be a working model, not garbage that fails later
    wav = sorted(Path(trained[2]).glob("*/*.wav"))[0]
    (p,) = model.predict([wav], progress=False, on_error="fail")
    assert p.label in model.labels and abs(sum(p.scores.values()) - 1.0) < 1e-6


@pytest.mark.slow
def test_train_in_finetune_mode_finetunes_one_network_per_view(trained, wavs, tmp_path):
    """mode finetune without given networks: each view's network is fine-tuned on all
    utterances, saved, and reloads to identical predictions."""
    from dataclasses import replace

    model, _, _, settings = trained
    ft_settings = replace(settings, mode="finetune", finetune_preset="cpu", finetune_epochs=1,
                          cache_dir=str(tmp_path / "cache"))
    ft = train_model(ft_settings, tmp_path / "ft", fusion="mid+side", progress=False)
    assert ft.mode == "finetuned"
    frozen_id = model.backbones["mid"].weights_id
    assert {b.weights_id for b in ft.backbones.values()}.isdisjoint({frozen_id})
    assert ft.backbones["mid"].weights_id != ft.backbones["side"].weights_id
    assert len(list((tmp_path / "cache" / "finetuned").glob("*.safetensors"))) == 2
    back = Model.load(tmp_path / "ft")
    files = wavs[::13]
    assert [p.to_dict() for p in back.predict(files, progress=False)] == \
        [p.to_dict() for p in ft.predict(files, progress=False)]


# ------------------------------------------------------------------------------ Whisper models

mono_ok = pytest.mark.filterwarnings("ignore::binser.views.MonoInputWarning")


@pytest.fixture(scope="module")
def whisper_base(tmp_path_factory):
    """(tiny encoder folder, demo corpus root, cache folder)."""
    base = tmp_path_factory.mktemp("whisper")
    root = make_demo_corpus(base / "corpus",
                            DemoSpec(n_speakers=3, per_emotion=2, max_duration_s=1.2))
    return save_tiny_whisper(base / "hf"), root, base / "cache"


@pytest.fixture(scope="module")
def whisper_trained(whisper_base, tmp_path_factory):
    """Four-view Whisper model, layer chosen by inner CV ("auto"): (model, folder, settings)."""
    hf, root, cache = whisper_base
    settings = ExperimentSettings(dataset="folder", root=str(root), backbone="whisper-tiny",
                                  weights=str(hf), layer="auto", synthetic=True,
                                  cache_dir=str(cache))
    out = tmp_path_factory.mktemp("wmodel") / "model"
    return train_model(settings, out, progress=False), out, settings


@pytest.fixture(scope="module")
def whisper_loaded(whisper_trained):
    return Model.load(whisper_trained[1])


@pytest.fixture(scope="module")
def whisper_norm(whisper_base, tmp_path_factory):
    """A speaker-normalised left+right Whisper model at layer 1, trained through the CLI."""
    hf, root, cache = whisper_base
    out = tmp_path_factory.mktemp("wnorm") / "model"
    code = main(["train", "--dataset", "folder", "--root", str(root), "--out", str(out),
                 "--backbone", "whisper-tiny", "--weights", str(hf), "--layer", "1",
                 "--speaker-norm", "--fusion", "left+right", "--cache-dir", str(cache),
                 "--quiet"])
    assert code == 0
    return Model.load(out)


@pytest.fixture(scope="module")
def whisper_wavs(whisper_base):
    return sorted(Path(whisper_base[1]).glob("*/*.wav"))


def frames_of(model: Model, files, views=None) -> dict[str, list[np.ndarray]]:
    """The model's layer features, extracted independently of Model.predict (one batch)."""
    from binser.features import FrameFeatureExtractor

    extractor = FrameFeatureExtractor(model.backbones[model.views[0]], config=model.frontend,
                                      views=views or model.views, layers=(model.layer,),
                                      progress=False)
    return extractor.extract(files)[model.layer]


def score_matrix(predictions, model, key="scores") -> np.ndarray:
    return np.array([[getattr(p, key)[c] for c in model.labels] for p in predictions])


def max_score_diff(a, b) -> float:
    """Largest difference between two lists of predictions: fused, per-view and timeline."""
    worst = 0.0
    for p, q in zip(a, b):
        assert (p.label, p.silent_views, p.speaker_norm) == (q.label, q.silent_views,
                                                            q.speaker_norm)
        pairs = [(p.scores, q.scores)] + [(p.view_scores[v], q.view_scores[v])
                                          for v in p.view_scores]
        for e, f in zip(p.timeline or [], q.timeline or []):
            assert (e["start_s"], e["end_s"]) == (f["start_s"], f["end_s"])
            pairs.append((e["scores"], f["scores"]))
        for s, t in pairs:
            assert s.keys() == t.keys()
            worst = max(worst, max(abs(s[c] - t[c]) for c in s))
    return worst


def test_whisper_model_folder_layer_choice_and_card(whisper_trained, whisper_base):
    from binser.backbones.whisper import WhisperConfig, load_whisper

    model, folder, _ = whisper_trained
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["MODEL_CARD.md", "backbone.safetensors", "classifier_left.safetensors",
                     "classifier_mid.safetensors", "classifier_right.safetensors",
                     "classifier_side.safetensors", "model.json"]
    doc = json.loads((folder / MODEL_JSON).read_text())
    spec = doc["backbone"]
    source_sha = file_sha256(whisper_base[0] / "model.safetensors")
    assert (spec["family"], spec["name"], spec["feature_dim"]) == ("whisper", "whisper-tiny", 64)
    assert spec["config"] == WhisperConfig(**TINY_WHISPER).to_dict()
    assert spec["weights_sha256"] == source_sha and spec["layer"] == model.layer
    assert doc["pooling"]["name"] == "stats" and doc["speaker_norm"] is False
    selection = doc["training"]["layer_selection"]
    assert set(selection["scores"]) == {"0", "1", "2"} and selection["chosen"] == model.layer
    for layer, score in selection["scores"].items():
        assert score == pytest.approx(np.mean(list(selection["view_scores"][layer].values())))
    best = max(selection["scores"], key=lambda k: (selection["scores"][k], -int(k)))
    assert int(best) == model.layer
    assert selection["scores"][best] == pytest.approx(
        np.mean([c.best_score_ for c in model.classifiers.values()]))
    card = (folder / "MODEL_CARD.md").read_text()
    assert f"speech encoder whisper-tiny, layer {model.layer}, weights sha256 " \
           f"{source_sha[:16]}" in card
    assert "px" not in card and "ImageNet-pretrained" not in card
    # the stored encoder: float32, names that load_whisper reads back to the same network
    again = load_whisper("whisper-tiny", weights=folder / "backbone.safetensors")
    assert again.config == model.backbones["left"].config
    assert again.weights_id == model.backbones["left"].weights_id


def test_whisper_save_load_predict_identical(whisper_trained, whisper_loaded, whisper_wavs):
    model = whisper_trained[0]
    assert (whisper_loaded.family, whisper_loaded.layer) == ("whisper", model.layer)
    assert whisper_loaded.backbones["side"].weights_id == model.backbones["side"].weights_id
    assert whisper_loaded.backbones["side"].weights_sha256 == \
        model.backbones["side"].weights_sha256
    files = whisper_wavs[::3]
    a = model.predict(files, timeline=True, progress=False)
    b = whisper_loaded.predict(files, timeline=True, progress=False)
    assert max_score_diff(a, b) < 1e-9
    for p in a:
        assert p.error is None and p.silent_views == [] and p.speaker_norm is None
        assert sum(p.scores.values()) == pytest.approx(1.0) and p.timeline


@mono_ok
def test_whisper_mono_file_side_silent(whisper_loaded, loaded, whisper_wavs, tmp_path):
    model = whisper_loaded
    data, sr = sf.read(whisper_wavs[5], dtype="int16")
    mono = tmp_path / "mono.wav"
    sf.write(mono, data[:, 0], sr, subtype="PCM_16")
    (p,) = model.predict([mono], progress=False)
    assert p.silent_views == ["side"] and "[silent: side]" in format_prediction(p)
    assert p.view_scores["side"] == {c: 0.25 for c in model.labels}
    # left/right/mid scored independently: same frames, pooling and classifiers
    frames = frames_of(model, [mono], views=("left", "right", "mid"))
    s = {}
    for v in ("left", "right", "mid"):
        X = model.pooling.make().fit_transform(frames[v])
        s[v] = model.view_proba(v, X)[0]
        assert max(abs(p.view_scores[v][c] - s[v][k]) for k, c in enumerate(model.labels)) \
            < 1e-9
    w = model.weights
    others = (w["gamma"] * (w["alpha"] * s["left"] + (1 - w["alpha"]) * s["right"])
              + (1 - w["gamma"]) * w["beta"] * s["mid"])
    constant = (1 - w["gamma"]) * (1 - w["beta"]) / len(model.labels)   # the silent side
    fused = np.array([p.scores[c] for c in model.labels])
    assert np.abs(fused - (others + constant)).max() < 1e-9
    assert p.label == model.labels[int(np.argmax(others))]   # the other views decide
    (q,) = loaded.predict([mono], progress=False)             # image CNN models alike
    assert q.silent_views == ["side"] and q.view_scores["side"] == {c: 0.25 for c in q.scores}


def test_whisper_timeline_windows(whisper_loaded, whisper_wavs, tmp_path):
    from binser.backbones.whisper import n_output_frames
    from binser.model import encoder_windows

    assert encoder_windows(1) == [(0, 1)] and encoder_windows(50) == [(0, 50)]
    assert encoder_windows(51) == [(0, 50), (25, 51)]
    assert encoder_windows(115) == [(0, 50), (25, 75), (50, 100), (75, 115)]
    data, sr = sf.read(whisper_wavs[0], dtype="int16")
    long = np.concatenate([data, data, data])[:int(2.3 * sr)]       # exactly 2.3 s
    path = tmp_path / "long.wav"
    sf.write(path, long, sr, subtype="PCM_16")
    assert n_output_frames(len(long)) == 115
    (p,) = whisper_loaded.predict([path], timeline=True, progress=False)
    assert [e["start_s"] for e in p.timeline] == [0.0, 0.5, 1.0, 1.5]
    assert [e["end_s"] for e in p.timeline] == [1.0, 1.5, 2.0, 2.3]
    for e in p.timeline:
        assert sum(e["scores"].values()) == pytest.approx(1.0)
        assert e["label"] == max(e["scores"], key=e["scores"].get) and not e["silent"]
    # a window is scored as a file holding exactly its samples: [0.5 s, 1.5 s) and the
    # shorter last one [1.5 s, 2.3 s)
    for k, (a, b) in ((1, (sr // 2, 3 * sr // 2)), (3, (3 * sr // 2, len(long)))):
        clip = tmp_path / f"clip{k}.wav"
        sf.write(clip, long[a:b], sr, subtype="PCM_16")
        (c,) = whisper_loaded.predict([clip], progress=False)
        assert max(abs(p.timeline[k]["scores"][lab] - c.scores[lab])
                   for lab in whisper_loaded.labels) < 1e-9
    # and NOT as a cut of the whole file's frames (the file's context is not used)
    frames = frames_of(whisper_loaded, [path])
    fused, _ = whisper_loaded.score_segments({v: [frames[v][0][25:75]]
                                              for v in whisper_loaded.views})
    assert max(abs(p.timeline[1]["scores"][c] - fused[0][k])
               for k, c in enumerate(whisper_loaded.labels)) > 1e-6
    short = tmp_path / "short.wav"                                   # 0.6 s: one window
    sf.write(short, data[:int(0.6 * sr)], sr, subtype="PCM_16")
    (q,) = whisper_loaded.predict([short], timeline=True, progress=False)
    assert len(q.timeline) == 1 and q.timeline[0]["scores"] == q.scores
    assert (q.timeline[0]["start_s"], q.timeline[0]["end_s"]) == (0.0, 0.6)


def test_whisper_bad_files_skipped_or_raised(whisper_loaded, whisper_base, whisper_wavs,
                                            tmp_path):
    from binser.errors import AudioError

    bad = tmp_path / "noise.wav"
    bad.write_bytes(b"this is not audio at all" * 10)
    missing = tmp_path / "missing.flac"
    data, sr = sf.read(whisper_wavs[0], dtype="int16")
    blip = tmp_path / "blip.wav"                     # 5 ms: too short for Whisper's front end
    sf.write(blip, data[:80], sr, subtype="PCM_16")
    good = whisper_loaded.predict(whisper_wavs[:2], progress=False)
    cache = whisper_base[2]            # the training run's frames: shared, not recomputed
    out = whisper_loaded.predict([whisper_wavs[0], bad, missing, blip, whisper_wavs[1]],
                                 progress=False, cache_dir=cache)
    assert [p.error is None for p in out] == [True, False, False, False, True]
    assert "noise.wav" in out[1].error and "missing.flac" in out[2].error
    assert "blip.wav" in out[3].error and "too short" in out[3].error
    assert out[3].label is None and out[3].scores == {}
    for p, q in zip(good, [out[0], out[4]]):
        assert max(abs(p.scores[c] - q.scores[c]) for c in p.scores) < 1e-6
    with pytest.raises(AudioError, match="missing.flac"):
        whisper_loaded.predict([whisper_wavs[0], missing], progress=False, on_error="fail")
    with pytest.raises(AudioError, match="blip.wav.*too short"):
        whisper_loaded.predict([whisper_wavs[0], blip], progress=False, on_error="fail")


def copies(files, folder: Path) -> list[Path]:
    """Copies under neutral names in one folder: nothing tells their labels."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, f in enumerate(files):
        out.append(folder / f"f{k}.wav")
        shutil.copy(f, out[-1])
    return out


def test_whisper_speaker_norm_own_statistics_and_fallback(whisper_norm, whisper_wavs,
                                                         tmp_path):
    from binser.normalisation import speaker_normalise

    model = whisper_norm
    assert model.speaker_norm and model.min_utterances == 5 and model.views == ("left", "right")
    doc = json.loads((model.path / MODEL_JSON).read_text())
    assert doc["speaker_norm"] is True and "transductive" in doc["speaker_norm_definition"]
    assert doc["speaker_norm_min_utterances"] == 5 and doc["backbone"]["layer"] == 1
    assert set(doc["normaliser_files"].values()) <= set(doc["sha256"])
    card = (model.path / "MODEL_CARD.md").read_text()
    assert "TRANSDUCTIVE" in card and "fewer than 5 files" in card
    speaker = [f for f in whisper_wavs if f.name.startswith("spk02_")]      # 8 files
    files = copies(speaker[:6], tmp_path / "unlabelled")
    from binser.normalisation import SpeakerAssumptionWarning

    with pytest.warns(SpeakerAssumptionWarning) as caught:   # several files, no speakers
        preds = model.predict(files, progress=False)
    assert [str(w.message) for w in caught if w.category is SpeakerAssumptionWarning] == [
        "speaker normalisation: 6 files given without speaker information (--speaker/"
        "--speakers); assumed they are ONE speaker (statistics over all 6 files); files of "
        "different speakers then share wrong statistics: name the speakers"]
    assert {p.speaker_norm for p in preds} == {"own statistics over 6 files"}
    with warnings.catch_warnings():                          # named: nothing assumed
        warnings.simplefilter("error", SpeakerAssumptionWarning)
        named = model.predict(files, speakers=["s"] * 6, progress=False)
        model.predict(files[:1], progress=False)             # one file: nothing to pool
    assert [p.scores for p in named] == [p.scores for p in preds]
    # by hand: pooled features standardised over these 6 files, then the classifiers
    frames = frames_of(model, files)
    proba = {}
    for v in model.views:
        X = model.pooling.make().fit_transform(frames[v])
        proba[v] = model.view_proba(v, speaker_normalise(X, ["s"] * len(files)))
    want = model.fuse_scores(proba)
    assert np.abs(score_matrix(preds, model) - want).max() < 1e-9
    # one file alone: the average training speaker, and the prediction says so
    (one,) = model.predict(files[:1], progress=False)
    assert one.speaker_norm == "fallback: average training speaker (only 1 file)"
    proba = {}
    for v in model.views:
        X = model.pooling.make().fit_transform([frames[v][0]])
        norm = model.normalisers[v]
        proba[v] = model.view_proba(v, (X - norm.fallback_mean_) / norm.fallback_std_)
    assert np.abs(score_matrix([one], model) - model.fuse_scores(proba)).max() < 1e-9
    # the folder a file sits in (a label, for a corpus) changes nothing
    (other,) = model.predict(copies(files[:1], tmp_path / "sadness"), progress=False)
    assert other.scores == one.scores
    # speakers per file: six of one speaker use their own statistics, the last falls back
    data, sr = sf.read(files[0], dtype="int16")
    short = tmp_path / "short.wav"                          # 0.6 s: a single timeline window
    sf.write(short, data[:int(0.6 * sr)], sr, subtype="PCM_16")
    mixed = model.predict(files[:5] + [short, files[5]], speakers=["a"] * 6 + ["b"],
                          timeline=True, progress=False)
    assert [p.speaker_norm for p in mixed] == ["own statistics over 6 files"] * 6 + [
        "fallback: average training speaker (only 1 file)"]
    (last,) = model.predict(files[5:], progress=False)
    assert mixed[6].scores == pytest.approx(last.scores, abs=1e-6)
    # a window is standardised with its file's speaker statistics: one window == the file
    assert len(mixed[5].timeline) == 1
    assert mixed[5].timeline[0]["scores"] == pytest.approx(mixed[5].scores, abs=1e-12)


def test_speakers_refused_by_plain_model(whisper_loaded, whisper_wavs):
    from binser.errors import ConfigError

    with pytest.raises(ConfigError, match="speaker normalisation"):
        whisper_loaded.predict(whisper_wavs[:1], speakers=["a"], progress=False)


def test_cli_predict_speaker_options(whisper_norm, whisper_trained, whisper_wavs, tmp_path,
                                     capsys):
    plain = str(whisper_trained[1])
    files = [str(f) for f in whisper_wavs if f.name.startswith("spk01_")][:5]
    assert main(["predict", plain, files[0], "--speaker", "x", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--speaker:" in err and "without speaker normalisation" in err
    table = tmp_path / "speakers.csv"
    table.write_text("path,speaker\n" + "".join(f"{f},anna\n" for f in files[:4])
                     + f"{files[4]},bert\n")
    assert main(["predict", plain, files[0], "--speakers", str(table), "--quiet"]) == 2
    assert "--speakers:" in capsys.readouterr().err
    norm = str(whisper_norm.path)
    assert main(["predict", norm, *files, "--speakers", str(table), "--json", "--quiet"]) == 0
    captured = capsys.readouterr()
    notes = [e["speaker_norm"] for e in json.loads(captured.out)]
    assert notes == ["fallback: average training speaker (only 4 files)"] * 4 + [
        "fallback: average training speaker (only 1 file)"]
    assert "note: speaker normalisation used the average training speaker" in captured.err
    assert main(["predict", norm, *files, "--speaker", "anna", "--json", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert {e["speaker_norm"] for e in json.loads(captured.out)} == \
        {"own statistics over 5 files"}
    assert "note:" not in captured.err
    assert main(["predict", norm, files[0], "--speakers", str(tmp_path / "none.csv"),
                 "--quiet"]) == 2
    assert "none.csv" in capsys.readouterr().err


@pytest.fixture
def whisper_copy(whisper_trained, tmp_path):
    return Path(shutil.copytree(whisper_trained[1], tmp_path / "wcopy"))


@pytest.mark.parametrize("change, message", [
    (lambda b: b.update(layer=3), "layer 3 is not a layer"),
    (lambda b: b.update(layer=-1), "layer -1 is not a layer"),
    (lambda b: b.update(layer="1"), "layer '1' is not a layer"),
    (lambda b: b.update(layer=True), "layer True is not a layer"),
    (lambda b: b["config"].update(d_model=0), "d_model must be in"),
    (lambda b: b["config"].update(encoder_attention_heads=3), "not divisible"),
    (lambda b: b["config"].update(encoder_layers=3), "do not fit the Whisper encoder"),
    (lambda b: b.update(feature_dim=32), "feature_dim 32"),
    (lambda b: b.update(name="whisper-huge"), "unknown Whisper backbone"),
    (lambda b: b.update(family="vit"), "unknown backbone family"),
    (lambda b: b["weights_id"].update(left="0" * 16), "identity"),
])
def test_tampered_whisper_backbone_refused(whisper_copy, change, message):
    rewrite_json(whisper_copy, lambda doc: change(doc["backbone"]))
    with pytest.raises(ModelError, match=message):
        Model.load(whisper_copy)


def test_tampered_speaker_norm_refused(whisper_norm, tmp_path):
    folder = Path(shutil.copytree(whisper_norm.path, tmp_path / "n"))
    rewrite_json(folder, lambda doc: doc.update(speaker_norm_min_utterances=0))
    with pytest.raises(ModelError, match="min_utterances"):
        Model.load(folder)
    from safetensors.numpy import load_file, save_file

    rewrite_json(folder, lambda doc: doc.update(speaker_norm_min_utterances=5))
    target = folder / "normaliser_left.safetensors"
    arrays = load_file(str(target))
    arrays["fallback_std"] = -arrays["fallback_std"]
    save_file(arrays, str(target))
    rewrite_json(folder, lambda doc: None, rehash=(target.name,))
    with pytest.raises(ModelError, match="normaliser_left.*positive"):
        Model.load(folder)


def test_old_cnn_model_json_without_new_fields_loads(model_copy, trained, wavs):
    def old(doc):
        for key in ("family",):
            doc["backbone"].pop(key)
        doc.pop("speaker_norm")
    rewrite_json(model_copy, old)
    model = Model.load(model_copy)
    assert (model.family, model.layer, model.speaker_norm) == ("imagenet", None, False)
    files = wavs[:3]
    assert [p.to_dict() for p in model.predict(files, progress=False)] == \
        [p.to_dict() for p in trained[0].predict(files, progress=False)]
