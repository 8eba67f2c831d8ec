"""Throughput of the Whisper windows: views that are the same signal
encoded once (bit-identical), windows batched under ``window_batch`` (frames equal to the
one-at-a-time ones within 1e-5 relative; scores within 1e-4, the relaxed equality the
server states), and the server's uploads with a timeline against ``predict --timeline``."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import save_tiny_whisper, train_tiny_whisper_model
from binser.errors import ConfigError
from binser.model import Model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from binser.backbones import load_whisper

    return load_whisper("whisper-tiny", save_tiny_whisper(tmp_path_factory.mktemp("tw") / "hf"))


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    folder, root = train_tiny_whisper_model(tmp_path_factory.mktemp("tput"))
    return Model.load(folder), root


def _signals(n: int = 5, seconds: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [(0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)
            for _ in range(n)]


def _count_chunks(backbone, monkeypatch) -> list[int]:
    """Counts the Mel chunks the backbone encodes (alone or in batches)."""
    counted = [0]
    one, many = backbone.encode_chunk, backbone.encode_chunks

    def chunk(mel, layers):
        counted[0] += 1
        return one(mel, layers)

    def chunks(mels, layers):
        counted[0] += len(mels)
        return many(mels, layers)

    monkeypatch.setattr(backbone, "encode_chunk", chunk)
    monkeypatch.setattr(backbone, "encode_chunks", chunks)
    return counted


def test_identical_signals_are_encoded_once(tiny, monkeypatch):
    from binser.features import clip_frames, encode_signals, unique_signals

    x, y = _signals(2)
    unique, where = unique_signals([x, x.copy(), y, x])
    assert len(unique) == 2 and where == [0, 0, 1, 0]
    alone = [encode_signals(tiny, [s], (1,))[0][1] for s in (x, y)]
    counted = _count_chunks(tiny, monkeypatch)
    got = encode_signals(tiny, [x, x.copy(), y], (1,))
    assert counted[0] == 2
    assert np.array_equal(got[0][1], alone[0]) and np.array_equal(got[1][1], alone[0])
    assert np.array_equal(got[2][1], alone[1])
    # a mono window: L = R are one signal (M = L + R = 2L is another: Whisper's log-Mel
    # is not gain-invariant; Side silent): two encodings, not three
    counted[0] = 0
    (frames,) = clip_frames(tiny, [x[None, :]], ["left", "right", "mid", "side"], 1)
    assert counted[0] == 2
    assert np.array_equal(frames["left"], alone[0]) and np.array_equal(frames["right"],
                                                                       alone[0])
    assert np.array_equal(frames["mid"], encode_signals(tiny, [x + x], (1,))[0][1])
    assert frames["side"].shape[0] == 0


def test_batched_windows_equal_one_at_a_time_within_1e_5_relative(tiny, monkeypatch):
    from binser.features import encode_windows, window_batch

    signals = _signals(7) + _signals(2, seconds=0.8)     # two lengths: two groups
    exact = encode_windows(tiny, signals, (1, 2), batch=1)
    counted = _count_chunks(tiny, monkeypatch)
    batched = encode_windows(tiny, signals, (1, 2), batch=4)
    assert counted[0] == len(signals)
    for a, b in zip(batched, exact):
        for layer in (1, 2):
            assert a[layer].shape == b[layer].shape
            scale = max(1.0, float(np.abs(b[layer]).max()))
            assert np.abs(a[layer] - b[layer]).max() <= 1e-5 * scale
    with window_batch(4):                      # the thread's setting is the default
        inside = encode_windows(tiny, signals, (1,))
        seen = []
        other = threading.Thread(target=lambda: seen.append(
            encode_windows(tiny, signals[:1], (1,))[0][1]))
        other.start()
        other.join()
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(inside, batched))
    assert np.array_equal(seen[0], exact[0][1])              # other threads: unbatched
    outside = encode_windows(tiny, signals, (1,))
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(outside, exact))
    with pytest.raises(ConfigError):
        with window_batch(0):
            pass


def test_server_timeline_equals_predict_within_1e_4(whisper, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from binser.serve.app import ServeSettings, create_app

    model, root = whisper
    parts = [sf.read(p, dtype="float32")[0] for p in sorted(Path(root).glob("*/*.wav"))[:3]]
    path = tmp_path / "three.wav"
    sf.write(path, np.concatenate(parts), 16000, subtype="FLOAT")
    (want,) = model.predict([path], timeline=True, progress=False)
    assert len(want.timeline) >= 5
    for batch, tolerance in ((16, 1e-4), (1, 0.0)):   # the stated bound; 1: bit-exact
        app = create_app(model, ServeSettings(window_batch=batch))
        with TestClient(app, base_url="http://127.0.0.1") as client:
            r = client.post("/predict", files={"file": ("t.wav", path.read_bytes(),
                                                        "audio/wav")})
        assert r.status_code == 200, r.text
        got = r.json()["timeline"]
        assert [(w["start_s"], w["end_s"]) for w in got] == \
            [(w["start_s"], w["end_s"]) for w in want.timeline]
        diff = max(abs(g["scores"][k] - w["scores"][k]) for g, w in zip(got, want.timeline)
                   for k in model.labels)
        assert diff <= tolerance, (batch, diff)


def test_quantize_int8_replaces_the_encoder_linear_layers(whisper, tmp_path):
    import copy
    import types

    import torch

    from binser.serve.quantize import quantize_model

    model, root = whisper
    wav = sorted(Path(root).glob("*/*.wav"))[0]
    backbone = model.backbones[model.views[0]]
    signal = sf.read(wav, dtype="float32")[0][:, 0]
    before = backbone.encode_one(signal, (model.layer,))[model.layer]
    (float_pred,) = model.predict([wav], progress=False)
    q = copy.copy(model)
    q.info = dict(model.info)
    shared = {id(b): copy.copy(b) for b in model.backbones.values()}
    q.backbones = {v: shared[id(b)] for v, b in model.backbones.items()}
    linear = sum(isinstance(m, torch.nn.Linear) for m in backbone.model.modules())
    assert quantize_model(q, "int8") == linear * len(shared) and linear > 0
    qb = q.backbones[q.views[0]]
    assert not any(isinstance(m, torch.nn.Linear) for m in qb.model.modules())
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in qb.model.modules())
    assert q.info["quantized"] == "int8" and "quantized" not in model.info
    after = qb.encode_one(signal, (model.layer,))[model.layer]
    assert after.shape == before.shape and not np.array_equal(after, before)
    assert np.corrcoef(after.ravel(), before.ravel())[0, 1] > 0.95
    (int8_pred,) = q.predict([wav], progress=False)
    assert sum(int8_pred.scores.values()) == pytest.approx(1.0)
    assert float_pred.scores != int8_pred.scores
    with pytest.raises(ConfigError, match="Whisper"):
        quantize_model(types.SimpleNamespace(family="imagenet", backbones={}, info={}))
    with pytest.raises(ConfigError, match="int8"):
        quantize_model(q, "int4")


def test_quantize_bf16_computes_linear_and_conv_products_in_bfloat16(whisper):
    """--quantize bf16: every Linear and Conv1d of the encoder becomes its bfloat16 version;
    each replaced layer equals a float32 reference computed from bfloat16-rounded inputs and
    weights; the encoder's outputs move a little, the shared original is untouched."""
    import copy

    import torch

    from binser.serve.quantize import BFloat16Conv1d, BFloat16Linear, quantize_model

    model, root = whisper
    wav = sorted(Path(root).glob("*/*.wav"))[0]
    backbone = model.backbones[model.views[0]]
    signal = sf.read(wav, dtype="float32")[0][:, 0]
    before = backbone.encode_one(signal, (model.layer,))[model.layer]
    q = copy.copy(model)
    q.info = dict(model.info)
    shared = {id(b): copy.copy(b) for b in model.backbones.values()}
    q.backbones = {v: shared[id(b)] for v, b in model.backbones.items()}
    wanted = sum(isinstance(m, (torch.nn.Linear, torch.nn.Conv1d))
                 for m in backbone.model.modules())
    assert quantize_model(q, "bf16") == wanted * len(shared) and wanted > 0
    qb = q.backbones[q.views[0]]
    assert not any(isinstance(m, (torch.nn.Linear, torch.nn.Conv1d)) for m in qb.model.modules())
    assert any(isinstance(m, torch.nn.Linear) for m in backbone.model.modules())  # original kept
    assert q.info["quantized"] == "bf16" and "quantized" not in model.info
    # one layer of each kind against the definition, computed in float32 from rounded values
    lin = next(m for m in backbone.model.modules() if isinstance(m, torch.nn.Linear))
    x = torch.randn(3, lin.in_features)
    r = lambda t: t.to(torch.bfloat16).to(torch.float32)    # noqa: E731
    ref = r(x) @ r(lin.weight.detach()).T + lin.bias.detach()
    got = BFloat16Linear(lin)(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-2, atol=1e-2 * float(ref.abs().max()))
    conv = next(m for m in backbone.model.modules() if isinstance(m, torch.nn.Conv1d))
    xc = torch.randn(2, conv.in_channels, 20)
    refc = torch.nn.functional.conv1d(r(xc), r(conv.weight.detach()), conv.bias.detach(),
                                      conv.stride, conv.padding)
    torch.testing.assert_close(BFloat16Conv1d(conv)(xc), refc, rtol=1e-2,
                               atol=1e-2 * float(refc.abs().max()))
    after = qb.encode_one(signal, (model.layer,))[model.layer]
    assert after.shape == before.shape and after.dtype == np.float32
    assert not np.array_equal(after, before)
    assert np.corrcoef(after.ravel(), before.ravel())[0, 1] > 0.99
    (bf16_pred,) = q.predict([wav], progress=False)
    assert sum(bf16_pred.scores.values()) == pytest.approx(1.0)


def test_a_client_leaving_stops_the_encoder(whisper, tmp_path, monkeypatch):
    """The server's computation of an upload whose client left stops at the next encoder
    call: here the client leaves while the file's own views are encoded, and none of its
    timeline windows is encoded (before, the whole timeline ran for nobody)."""
    import threading

    from binser.features import Cancelled, encode_windows, window_batch
    from binser.serve.app import ServeSettings, _predict_file

    model, root = whisper
    parts = [sf.read(p, dtype="float32")[0] for p in sorted(Path(root).glob("*/*.wav"))[:4]]
    path = tmp_path / "four.wav"
    sf.write(path, np.concatenate(parts), 16000, subtype="FLOAT")
    backbone = model.backbones[model.views[0]]
    left = threading.Event()
    shapes: list[int] = []
    real = backbone.encode_chunks

    def encode_chunks(mels, layers):
        shapes.extend(m.shape[1] for m in mels)
        left.set()                       # the client disconnects during this call
        return real(mels, layers)

    monkeypatch.setattr(backbone, "encode_chunks", encode_chunks)
    out = _predict_file(model, str(path), "four.wav", True, False, ServeSettings(), left)
    assert out is None
    assert shapes and min(shapes) > 100   # only the whole file's views (> 1 s of Mel)
    with pytest.raises(Cancelled):        # and directly: a set event stops the next call
        with window_batch(4, left):
            encode_windows(backbone, _signals(2), (1,))


def test_identical_cnn_images_are_computed_once(monkeypatch):
    import warnings

    from binser.backbones import get_backbone
    from binser.features import cnn_features

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = get_backbone("efficientnet_lite0", weights="random", input_size=64,
                                allow_random=True)
    backbone.model.eval()
    rng = np.random.default_rng(1)
    a, b = rng.random((2, 3, 64, 64), dtype=np.float32)
    alone = cnn_features(backbone, np.stack([a, b]))
    rows = []
    real = backbone.model.forward

    def forward(x):
        rows.append(len(x))
        return real(x)

    monkeypatch.setattr(backbone.model, "forward", forward)
    got = cnn_features(backbone, np.stack([a.copy() for _ in range(17)] + [b]))
    assert sum(rows) == 16          # one padded sub-batch holding a and b once (not two)
    assert np.array_equal(got, alone[[0] * 17 + [1]])   # bit for bit (company-independent)


# ------------------------------------------------------------------ the encoder's floor

def test_whisper_encoder_flops_by_hand_and_against_torch_counter(tiny):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from binser.benchmark import whisper_encoder_flops

    # T = 4 frames, S = 2 tokens, n_mels 2, d 3, ffn 5: stem 144 + 108, a block 144 + 48 + 120
    assert whisper_encoder_flops(4, 2, 3, 5, 0) == 252
    assert whisper_encoder_flops(4, 2, 3, 5, 1) == 564
    # whisper-base, 1 s (100 frames) to layer 3: 1.0622976 GFLOP
    assert whisper_encoder_flops(100, 80, 512, 2048, 3) == 1_062_297_600
    cfg = tiny.config
    for frames, layer in ((100, 1), (77, 2)):   # torch's counter sees convs and linears;
        mel = torch.zeros(1, cfg.num_mel_bins, frames)   # not the CPU's fused attention
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            tiny.model(mel, None, [layer])
        attention = layer * 4 * ((frames + 1) // 2) ** 2 * cfg.d_model
        assert counter.get_total_flops() + attention == whisper_encoder_flops(
            frames, cfg.num_mel_bins, cfg.d_model, cfg.encoder_ffn_dim, layer)


def test_serve_encoder_work_counts_what_an_upload_encodes(whisper, tmp_path):
    from binser.benchmark import serve_encoder_work, whisper_encoder_flops

    model, _ = whisper
    rng = np.random.default_rng(5)
    stereo = (0.1 * rng.standard_normal((32000, 2))).astype(np.float32)   # 2 s
    sf.write(tmp_path / "stereo.wav", stereo, 16000, subtype="FLOAT")
    sf.write(tmp_path / "mono.wav", stereo[:, 0], 16000, subtype="FLOAT")
    spans = model.window_spans(32000)
    assert len(spans) >= 3
    frames = [32000 // 160] + [(b - a) // 160 for a, b in spans]   # the file, its windows
    cfg = model.backbone.config
    flop = sum(whisper_encoder_flops(t, cfg.num_mel_bins, cfg.d_model, cfg.encoder_ffn_dim,
                                     model.layer) for t in frames)
    # stereo: four distinct views; mono: L = R once, M, and a silent Side -> two
    for name, views in (("stereo.wav", 4), ("mono.wav", 2)):
        got = serve_encoder_work(model, [tmp_path / name])
        assert got["view_seconds"] == pytest.approx(views * sum(frames) / 100)
        assert got["gflop"] == pytest.approx(views * flop / 1e9)
