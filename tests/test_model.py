"""Trained model folders: train once on a tiny synthetic corpus, then save/load/predict,
safety checks (tampering, truncation, path escapes, versions, no pickle) and the CLI."""
from __future__ import annotations

import fractions
import json
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from binser.cli import main
from binser.demo import DemoSpec, make_demo_corpus
from binser.errors import ModelError
from binser.experiment import ExperimentSettings
from binser.model import (MODEL_JSON, Model, content_sha256, file_sha256, format_prediction,
                          train_model)
from binser.spectrogram import n_segments


# ------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(in-memory model, its saved folder, corpus root, settings): trained once."""
    base = tmp_path_factory.mktemp("model")
    root = make_demo_corpus(base / "corpus",
                            DemoSpec(n_speakers=3, per_emotion=2, max_duration_s=1.2))
    settings = ExperimentSettings(dataset="folder", root=str(root), input_size=32,
                                  synthetic=True, cache_dir=str(base / "cache"))
    model = train_model(settings, base / "model", progress=False)
    return model, base / "model", root, settings


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
    feats, _ = extract_features(found, settings, progress=False)   # from the cache
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
        Model.load(fuzz_copy)
    except ModelError:
        pass


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
