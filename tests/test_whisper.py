"""Whisper encoder backbone: front end and encoder against Hugging Face Transformers (an
independent reference, test-only), weights formats, batching with masks, chunking, errors.

Real Whisper-base weights are read from ../shared/models/whisper-base (skipped where absent);
everything else runs on small random encoders saved in Hugging Face layout in tmp folders.
"""
from __future__ import annotations

import copy
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from binser.backbones.imagenet import weights_digest
from binser.backbones.whisper import (CHUNK_FRAMES, FRAME_S, HOP, HUB_REPO, N_FFT, SAMPLE_RATE,
                                      WHISPER_BACKBONES, WHISPER_SIZES, WhisperBackbone,
                                      WhisperConfig, WhisperEncoder, load_whisper,
                                      n_output_frames, whisper_cache_folder, whisper_log_mel)
from binser.errors import AudioError, ConfigError, ModelError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BASE_DIR = SHARED / "models/whisper-base"
EMOVO_FILE = SHARED / "data/emovo/f1/gio-f1-b1.flac"
TINY = WhisperConfig(d_model=64, encoder_layers=2, encoder_attention_heads=4,
                     encoder_ffn_dim=256, num_mel_bins=80, max_source_positions=1500)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def need_base() -> Path:
    if not (BASE_DIR / "model.safetensors").is_file():
        pytest.skip(f"Whisper-base weights not found at {BASE_DIR} (they live in "
                    "../shared/models/whisper-base beside the project)")
    return BASE_DIR


def need_transformers():
    try:
        import transformers  # noqa: F401
    except ImportError:
        pytest.skip("transformers is not installed: it is only the test-only reference for "
                    "the Whisper front end and encoder (pip install transformers)")
    return transformers


def chirp_signal(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise plus a rising chirp (200 Hz -> ~4 kHz), float32 at 16 kHz."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    chirp = 0.5 * np.sin(2 * np.pi * (200 * t + 300 * t ** 2))
    return (0.05 * rng.standard_normal(n) + chirp).astype(np.float32)


def random_encoder(config: WhisperConfig, seed: int) -> WhisperEncoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WhisperEncoder(config).eval()


def save_hf_folder(folder: Path, model: WhisperEncoder, config: WhisperConfig | None,
                   prefix: str = "model.encoder.", extra: dict | None = None,
                   dtype: torch.dtype = torch.float32) -> Path:
    """A Hugging Face-layout folder: model.safetensors (+ config.json when config given)."""
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    state = {prefix + k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    state.update(extra or {})
    save_file(state, str(folder / "model.safetensors"))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config.to_dict()))
    return folder


def to_openai(hf_state: dict[str, torch.Tensor], config: WhisperConfig) -> dict:
    """An openai-whisper checkpoint from an encoder state dict with Hugging Face names."""
    parts = {"self_attn.q_proj.": "attn.query.", "self_attn.k_proj.": "attn.key.",
             "self_attn.v_proj.": "attn.value.", "self_attn.out_proj.": "attn.out.",
             "self_attn_layer_norm.": "attn_ln.", "fc1.": "mlp.0.", "fc2.": "mlp.2.",
             "final_layer_norm.": "mlp_ln."}
    out = {}
    for name, tensor in hf_state.items():
        if name == "embed_positions.weight":
            new = "encoder.positional_embedding"
        elif name.startswith("layer_norm."):
            new = "encoder.ln_post." + name[len("layer_norm."):]
        elif name.startswith("layers."):
            _, index, rest = name.split(".", 2)
            old = next(p for p in parts if rest.startswith(p))
            new = f"encoder.blocks.{index}.{parts[old]}{rest[len(old):]}"
        else:
            new = "encoder." + name
        out[new] = tensor.clone()
    out["decoder.token_embedding.weight"] = torch.zeros(4, config.d_model)  # ignored
    dims = {"n_mels": config.num_mel_bins, "n_audio_ctx": config.max_source_positions,
            "n_audio_state": config.d_model, "n_audio_head": config.encoder_attention_heads,
            "n_audio_layer": config.encoder_layers, "n_vocab": 4, "n_text_ctx": 8,
            "n_text_state": config.d_model, "n_text_head": 1, "n_text_layer": 1}
    return {"dims": dims, "model_state_dict": out}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A random 64-D, 2-layer, 4-head encoder saved as a Hugging Face folder."""
    return save_hf_folder(tmp_path_factory.mktemp("tiny") / "hf", random_encoder(TINY, 0), TINY)


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> WhisperBackbone:
    return load_whisper("whisper-tiny", tiny_dir)


@pytest.fixture(scope="module")
def base() -> WhisperBackbone:
    return load_whisper("whisper-base", need_base())


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, np.float64))))


# --------------------------------------------------------------------------------------
# constants and config
# --------------------------------------------------------------------------------------

def test_constants_and_config_round_trip():
    assert WHISPER_SIZES == ("tiny", "base", "small", "medium", "large-v3")
    assert WHISPER_BACKBONES[1] == "whisper-base" and HUB_REPO.format(size="base") == \
        "openai/whisper-base"
    assert (SAMPLE_RATE, HOP, N_FFT, CHUNK_FRAMES, FRAME_S) == (16000, 160, 400, 3000, 0.02)
    assert WhisperConfig.from_hf(TINY.to_dict()) == TINY
    dims = {"n_mels": 128, "n_audio_ctx": 1500, "n_audio_state": 1280, "n_audio_head": 20,
            "n_audio_layer": 32}
    large = WhisperConfig.from_openai_dims(dims)
    assert (large.d_model, large.encoder_ffn_dim, large.num_mel_bins) == (1280, 5120, 128)


@pytest.mark.parametrize("change", [{"d_model": 0}, {"d_model": 100},  # with 3 heads
                                    {"encoder_layers": 65}, {"num_mel_bins": 300},
                                    {"d_model": 8192}, {"encoder_ffn_dim": 2.5},
                                    {"encoder_attention_heads": True}])
def test_config_rejects_bad_values(change):
    values = TINY.to_dict()
    values.pop("model_type")
    values.update(change)
    if change == {"d_model": 100}:
        values["encoder_attention_heads"] = 3
    with pytest.raises(ConfigError):
        WhisperConfig(**values)


def test_config_from_hf_rejects_other_models():
    with pytest.raises(ConfigError, match="model_type"):
        WhisperConfig.from_hf({**TINY.to_dict(), "model_type": "bert"})
    with pytest.raises(ConfigError, match="missing"):
        WhisperConfig.from_hf({"d_model": 64})


def test_shared_config_is_whisper_base():
    config = WhisperConfig.from_hf(json.loads((need_base() / "config.json").read_text()))
    assert config.dims == (512, 6, 8, 80)
    assert (config.encoder_ffn_dim, config.max_source_positions) == (2048, 1500)


# --------------------------------------------------------------------------------------
# 1. front end
# --------------------------------------------------------------------------------------

def hf_log_mel(signal: np.ndarray) -> np.ndarray:
    transformers = need_transformers()
    if (BASE_DIR / "preprocessor_config.json").is_file():
        extractor = transformers.WhisperFeatureExtractor.from_pretrained(str(BASE_DIR))
    else:
        extractor = transformers.WhisperFeatureExtractor(
            feature_size=80, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400)
    return extractor(signal, sampling_rate=16000, padding="longest",
                     return_tensors="np").input_features[0]


def test_front_end_matches_transformers_on_chirp():
    signal = chirp_signal(2.0137)
    ours = whisper_log_mel(signal)
    ref = hf_log_mel(signal)
    assert ours.shape == ref.shape == (80, len(signal) // HOP)
    assert ours.dtype == np.float32
    assert max_diff(ours, ref) < 1e-4
    # with silence in it, the clamp shows: the floor is 8 (2 after scaling) below the maximum
    signal[8000:16000] = 0.0
    ours = whisper_log_mel(signal)
    assert ours.min() == pytest.approx(ours.max() - 2.0, abs=1e-5)
    assert max_diff(ours, hf_log_mel(signal)) < 1e-4


def test_front_end_matches_transformers_on_emovo():
    if not EMOVO_FILE.is_file():
        pytest.skip(f"EMOVO file not found at {EMOVO_FILE} (../shared/data/emovo)")
    import soundfile as sf
    audio, rate = sf.read(str(EMOVO_FILE), dtype="float32", always_2d=True)
    assert rate == SAMPLE_RATE
    left = np.ascontiguousarray(audio[:, 0])
    ours = whisper_log_mel(left)
    ref = hf_log_mel(left)
    assert ours.shape == ref.shape == (80, len(left) // HOP)
    assert max_diff(ours, ref) < 1e-4


def test_front_end_short_and_invalid_signals():
    assert whisper_log_mel(chirp_signal(1.0)[:201]).shape == (80, 1)
    assert whisper_log_mel(chirp_signal(1.0)[:401], n_mels=128).shape == (128, 2)
    for n in (0, 150, 200):
        with pytest.raises(AudioError, match="at least 201 samples"):
            whisper_log_mel(np.zeros(n, np.float32))
    bad = chirp_signal(0.1)
    bad[10] = np.nan
    with pytest.raises(AudioError, match="non-finite"):
        whisper_log_mel(bad)
    with pytest.raises(AudioError, match="1-D"):
        whisper_log_mel(np.zeros((2, 1000), np.float32))


# --------------------------------------------------------------------------------------
# 2. encoder against Transformers
# --------------------------------------------------------------------------------------

def hf_encoder(config: WhisperConfig, state: dict[str, torch.Tensor], n_positions: int):
    """Transformers' WhisperEncoder (the encoder of WhisperModel) with ``n_positions`` rows.

    Its forward insists on exactly 2 * max_source_positions Mel frames; giving it
    max_source_positions = T / 2 and the first T / 2 rows of the position table makes it run
    on the real length with no change to its code.
    """
    transformers = need_transformers()
    from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFEncoder
    hf_config = transformers.WhisperConfig(
        d_model=config.d_model, encoder_layers=config.encoder_layers,
        encoder_attention_heads=config.encoder_attention_heads,
        encoder_ffn_dim=config.encoder_ffn_dim, num_mel_bins=config.num_mel_bins,
        max_source_positions=n_positions)
    model = HFEncoder(hf_config).float().eval()
    state = dict(state)
    state["embed_positions.weight"] = state["embed_positions.weight"][:n_positions]
    model.load_state_dict(state, strict=True)
    return model


def hidden_states(model, mel: np.ndarray) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return model(torch.from_numpy(mel)[None], output_hidden_states=True).hidden_states


def test_encoder_matches_transformers_real_length(base):
    signal = chirp_signal(2.0, seed=3)
    mel = whisper_log_mel(signal)
    assert mel.shape[1] % 2 == 0
    from safetensors.torch import load_file
    state = {k[len("model.encoder."):]: v.float()
             for k, v in load_file(str(BASE_DIR / "model.safetensors")).items()}
    ref = hidden_states(hf_encoder(base.config, state, mel.shape[1] // 2), mel)
    assert len(ref) == 7
    with torch.no_grad():
        ours = base.model(torch.from_numpy(mel)[None], None, range(7))
    for i in range(7):
        scale = float(ref[i].abs().max())
        assert ours[i].shape == ref[i].shape == (1, mel.shape[1] // 2, 512)
        assert max_diff(ours[i], ref[i]) <= 1e-4 * scale, i
    # the backbone's encode gives the same rows
    encoded = base.encode_one(signal, [0, 4, 6])
    for i in (0, 4, 6):
        assert max_diff(encoded[i], ref[i][0]) <= 1e-4 * float(ref[i].abs().max())


def test_encoder_matches_transformers_padded_to_30s(base):
    """The original setting (3000 zero-padded frames, no mask) also agrees."""
    mel = np.zeros((80, 3000), np.float32)
    mel[:, :150] = whisper_log_mel(chirp_signal(1.5, seed=4))
    from safetensors.torch import load_file
    state = {k[len("model.encoder."):]: v.float()
             for k, v in load_file(str(BASE_DIR / "model.safetensors")).items()}
    ref = hidden_states(hf_encoder(base.config, state, 1500), mel)
    with torch.no_grad():
        ours = base.model(torch.from_numpy(mel)[None], None, [2, 6])
    for i in (2, 6):
        assert max_diff(ours[i], ref[i]) <= 1e-4 * float(ref[i].abs().max())


def test_encoder_matches_transformers_tiny_random(tiny):
    mel = whisper_log_mel(chirp_signal(0.8, seed=5))
    state = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    ref = hidden_states(hf_encoder(TINY, state, mel.shape[1] // 2), mel)
    with torch.no_grad():
        ours = tiny.model(torch.from_numpy(mel)[None], None, [0, 1, 2])
    for i in range(3):
        assert max_diff(ours[i], ref[i]) < 1e-5


# --------------------------------------------------------------------------------------
# 3. formats: openai .pt, full model, prefixes, inferred dims
# --------------------------------------------------------------------------------------

def test_openai_checkpoint_tiny(tiny, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(to_openai(tiny.model.state_dict(), TINY), path)
    loaded = load_whisper("whisper-tiny", path)
    assert loaded.config == TINY
    assert loaded.weights_id == tiny.weights_id
    signal = chirp_signal(1.1)
    a, b = tiny.encode_one(signal, [0, 2]), loaded.encode_one(signal, [0, 2])
    assert all(np.array_equal(a[i], b[i]) for i in (0, 2))


def test_openai_checkpoint_base(base, tmp_path):
    state = {k: v.to(torch.float16) for k, v in base.model.state_dict().items()}
    path = tmp_path / "base.pt"
    torch.save(to_openai(state, base.config), path)
    loaded = load_whisper("whisper-base", path)
    assert loaded.weights_id == base.weights_id  # fp16 -> fp32 gives the same floats
    signal = chirp_signal(0.7)
    a, b = base.encode_one(signal, [3, 6]), loaded.encode_one(signal, [3, 6])
    assert all(np.array_equal(a[i], b[i]) for i in (3, 6))


def test_full_model_file_and_prefixes(tiny, tmp_path):
    model = tiny.model
    decoder = {"model.decoder.layers.0.fc1.weight": torch.zeros(3, 2),
               "proj_out.weight": torch.zeros(2, 2)}
    full = save_hf_folder(tmp_path / "full", model, TINY, extra=decoder, dtype=torch.float16)
    short = save_hf_folder(tmp_path / "short", model, TINY, prefix="encoder.")
    signal = chirp_signal(0.9)
    want = tiny.encode_one(signal, [2])[2]
    from_full = load_whisper("whisper-tiny", full)
    assert np.abs(from_full.encode_one(signal, [2])[2] - want).max() < 1e-2  # fp16 weights
    from_file = load_whisper("whisper-tiny", short / "model.safetensors")  # config beside it
    assert from_file.weights_id == tiny.weights_id
    assert np.array_equal(from_file.encode_one(signal, [2])[2], want)
    assert from_file.weights_sha256 != from_full.weights_sha256
    assert len(from_file.weights_sha256) == 64 and from_file.source.endswith("model.safetensors")


def test_dims_inferred_without_config_json(tmp_path):
    config = WhisperConfig(d_model=128, encoder_layers=3, encoder_attention_heads=2,
                           encoder_ffn_dim=200, num_mel_bins=128, max_source_positions=700)
    model = random_encoder(config, 7)
    folder = save_hf_folder(tmp_path / "noconfig", model, None, prefix="encoder.")
    loaded = load_whisper("whisper-small", folder)
    assert loaded.config == config
    assert loaded.n_mels == 128 and loaded.n_layers == 3 and loaded.feature_dim == 128
    assert loaded.weights_id == weights_digest(model.state_dict())
    out = loaded.encode_one(chirp_signal(0.5), [3])[3]
    assert out.shape == (25, 128) and out.dtype == np.float32


# --------------------------------------------------------------------------------------
# 4. the tiny random model end to end; layer indexing
# --------------------------------------------------------------------------------------

def test_tiny_backbone_attributes_and_layers(tiny, tiny_dir):
    assert (tiny.name, tiny.size, tiny.feature_dim, tiny.n_layers, tiny.n_mels) == \
        ("whisper-tiny", "tiny", 64, 2, 80)
    assert tiny.pretrained and tiny.device == torch.device("cpu")
    assert not tiny.model.training
    assert len(tiny.weights_id) == 16 and tiny.weights_id == weights_digest(
        tiny.model.state_dict())
    signal = chirp_signal(1.234)
    every = tiny.encode_one(signal, [0, 1, 2])
    t = len(signal) // HOP
    assert set(every) == {0, 1, 2}
    for i in range(3):
        assert every[i].shape == ((t + 1) // 2, 64) and every[i].dtype == np.float32
    assert max_diff(every[0], every[2]) > 0.1
    assert max_diff(every[1], every[2]) > 0.1
    only = tiny.encode_one(signal, [1])
    assert set(only) == {1} and np.array_equal(only[1], every[1])
    # the last index is after the final layer norm: zero mean, unit variance per row
    # before the (random) affine part, so undoing it gives mean 0
    ln = tiny.model.layer_norm
    normed = (torch.from_numpy(every[2]) - ln.bias.detach()) / ln.weight.detach()
    assert float(normed.mean(dim=1).abs().max()) < 1e-4


def test_layer_index_zero_is_stem_plus_positions(tiny):
    mel = torch.from_numpy(whisper_log_mel(chirp_signal(0.5)))[None]
    m = tiny.model
    with torch.no_grad():
        x = torch.nn.functional.gelu(m.conv2(torch.nn.functional.gelu(m.conv1(mel))))
        want = x.transpose(1, 2) + m.embed_positions.weight[:x.shape[-1]]
        got = m(mel, None, [0])[0]
    assert torch.equal(got, want)


def test_encode_sizes_odd_lengths(tiny):
    signals = [chirp_signal(s, seed=k)[:n] for k, (s, n) in
               enumerate([(0.1, 201), (0.1, 330), (0.5, 8000), (0.5, 7999)])]
    out = tiny.encode(signals, [1])
    assert [o[1].shape[0] for o in out] == [1, 1, 25, 25]
    assert [n_output_frames(len(s)) for s in signals] == [1, 1, 25, 25]
    assert tiny.encode([], [1]) == []


# --------------------------------------------------------------------------------------
# 5. batched == one by one (and the mask matters)
# --------------------------------------------------------------------------------------

SECONDS = (0.51, 1.33, 2.7)  # 51, 133, 270 Mel frames: odd lengths test the conv edge


def padded_batch(mels: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(m.shape[1] for m in mels)
    batch = torch.zeros(len(mels), mels[0].shape[0], t)
    for j, m in enumerate(mels):
        batch[j, :, :m.shape[1]] = torch.from_numpy(m)
    return batch, torch.tensor([m.shape[1] for m in mels])


def test_batched_equals_alone_tiny(tiny):
    signals = [chirp_signal(s, seed=10 + k) for k, s in enumerate(SECONDS)]
    together = tiny.encode(signals, [0, 1, 2])
    for signal, got in zip(signals, together):
        alone = tiny.encode_one(signal, [0, 1, 2])
        for i in range(3):
            assert got[i].shape == alone[i].shape
            assert max_diff(got[i], alone[i]) < 1e-4
    # small batches (one chunk each) give the same too
    split = tiny.encode(signals, [2], max_batch_frames=1)
    for a, b in zip(split, together):
        assert max_diff(a[2], b[2]) < 1e-4
    # without the mask the padding changes the shorter items: the test could fail
    mels = [whisper_log_mel(s) for s in signals]
    batch, lengths = padded_batch(mels)
    with torch.no_grad():
        unmasked = tiny.model(batch, None, [2])[2]
        masked = tiny.model(batch, lengths, [2])[2]
    n0 = (lengths[0].item() + 1) // 2
    assert max_diff(masked[0, :n0], together[0][2]) < 1e-4
    assert max_diff(unmasked[0, :n0], together[0][2]) > 1e-2
    # whatever the padding holds, the masked items are the same
    garbage = batch.clone()
    for j, n in enumerate(lengths.tolist()):
        garbage[j, :, n:] = 5.0
    with torch.no_grad():
        assert max_diff(tiny.model(garbage, lengths, [2])[2], masked) == 0.0
    # layer 0 has no attention: only the conv edge of an odd length shows the padding, in
    # its last row, which the zeroed conv1 activations keep right
    with torch.no_grad():
        stem = tiny.model(batch, None, [0])[0]
    assert max_diff(stem[0, n0 - 1], together[0][0][-1]) > 1e-3
    assert max_diff(stem[0, :n0 - 1], together[0][0][:-1]) < 1e-5


def test_batched_equals_alone_base(base):
    """On the real weights the difference is float32 rounding: as large as the rounding
    error of either computation against float64, and far below the unmasked difference."""
    layers = list(range(7))
    signals = [chirp_signal(s, seed=20 + k) for k, s in enumerate(SECONDS)]
    together = base.encode(signals, layers)
    exact = copy.deepcopy(base.model).double()
    mels = [whisper_log_mel(s) for s in signals]
    batch, lengths = padded_batch(mels)
    with torch.no_grad():
        unmasked = base.model(batch, None, layers)
    for j, (signal, got) in enumerate(zip(signals, together)):
        alone = base.encode_one(signal, layers)
        with torch.no_grad():
            truth = exact(torch.from_numpy(mels[j]).double()[None], None, layers)
        n = (mels[j].shape[1] + 1) // 2
        for i in layers:
            ref = truth[i][0].numpy()
            scale = float(np.abs(ref).max())
            diff = max_diff(got[i], alone[i])
            if i <= 3:  # before Whisper's huge activations (~200-400) appear in layer 4
                assert diff < 1e-4, (j, i, diff)
            assert diff < 2e-5 * scale, (j, i, diff, scale)
            assert max_diff(got[i], ref) <= 4 * max_diff(alone[i], ref) + 1e-5, (j, i)
            if j < 2 and i > 0:  # padded items: unmasked outputs are far off
                assert max_diff(unmasked[i][j, :n], alone[i]) > 1e-2 * scale, (j, i)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gpu_matches_cpu(tiny_dir, dtype):
    signals = [chirp_signal(s, seed=40 + k) for k, s in enumerate(SECONDS)]
    cpu = load_whisper("whisper-tiny", tiny_dir)
    want = cpu.encode(signals, [1, 2])
    gpu = load_whisper("whisper-tiny", tiny_dir).to("cuda", dtype)
    assert gpu.device.type == "cuda"
    got = gpu.encode(signals, [1, 2])
    tol = 1e-3 if dtype == torch.float32 else 3e-2
    for a, b in zip(got, want):
        assert a[2].dtype == np.float32
        assert max_diff(a[2], b[2]) <= tol * float(np.abs(b[2]).max())


# --------------------------------------------------------------------------------------
# 6. inputs longer than 30 s
# --------------------------------------------------------------------------------------

def test_long_input_is_chunked(tiny):
    signal = chirp_signal(35.27, seed=30)
    signal[470000:490000] = 0.0  # silence around 30 s: its last frame is the same alone
    t = len(signal) // HOP
    out = tiny.encode_one(signal, [0, 2])
    expected = CHUNK_FRAMES // 2 + (t - CHUNK_FRAMES + 1) // 2
    assert out[2].shape == (expected, 64) == (n_output_frames(len(signal)), 64)
    first = tiny.encode_one(signal[:CHUNK_FRAMES * HOP], [0, 2])
    assert first[2].shape == (1500, 64)
    for i in (0, 2):
        assert max_diff(out[i][:1500], first[i]) < 1e-5
    # each chunk is its own real-length window of the utterance's log-Mel
    mel = torch.from_numpy(whisper_log_mel(signal))[None]
    with torch.no_grad():
        second = tiny.model(mel[:, :, CHUNK_FRAMES:], None, [2])[2][0]
    assert max_diff(out[2][1500:], second) < 1e-5
    # and the second chunk is not what the first chunk's context would give
    with torch.no_grad():
        whole_tail = tiny.model(mel[:, :, -CHUNK_FRAMES:], None, [2])[2][0]
    assert max_diff(out[2][-10:], whole_tail[-10:]) > 1e-3


def test_encoder_rejects_too_long_input(tiny):
    with pytest.raises(ConfigError, match="3000"):
        tiny.model(torch.zeros(1, 80, 3001), None, [1])
    with pytest.raises(ConfigError, match=r"\(B, 80, T\)"):
        tiny.model(torch.zeros(1, 128, 30), None, [1])
    with pytest.raises(ConfigError, match="lengths"):
        tiny.model(torch.zeros(2, 80, 30), torch.tensor([31, 2]), [1])


# --------------------------------------------------------------------------------------
# 7. errors and the weights cache / download
# --------------------------------------------------------------------------------------

def test_unknown_name(tiny_dir):
    with pytest.raises(ConfigError, match="whisper-large-v3"):
        load_whisper("whisper-huge", tiny_dir)


@pytest.mark.parametrize("layers", [[3], [-1], [0, 1.0], [], [True]])
def test_bad_layer_index(tiny, layers):
    with pytest.raises(ConfigError, match=r"0\.\.2"):
        tiny.encode([chirp_signal(0.3)], layers)


def test_bad_signals(tiny):
    with pytest.raises(AudioError, match="signal 1"):
        tiny.encode([chirp_signal(0.3), np.zeros(100, np.float32)], [1])
    with pytest.raises(ConfigError, match="encode_one"):
        tiny.encode(chirp_signal(0.3), [1])
    with pytest.raises(ConfigError, match="max_batch_frames"):
        tiny.encode([chirp_signal(0.3)], [1], max_batch_frames=0)
    with pytest.raises(ConfigError, match="GPU"):
        tiny.to("cpu", torch.float16)


def test_size_mismatch_with_real_weights():
    with pytest.raises(ModelError, match="whisper-base weights.*not whisper-tiny"):
        load_whisper("whisper-tiny", need_base())


def test_size_mismatch_without_shared_folder(tmp_path):
    tiny_dims = WhisperConfig(d_model=384, encoder_layers=4, encoder_attention_heads=6,
                              encoder_ffn_dim=1536, num_mel_bins=80, max_source_positions=1500)
    folder = save_hf_folder(tmp_path / "tinydims", random_encoder(tiny_dims, 1), tiny_dims,
                            dtype=torch.float16)
    assert load_whisper("whisper-tiny", folder).config == tiny_dims
    with pytest.raises(ModelError, match="whisper-tiny weights.*not whisper-large-v3"):
        load_whisper("whisper-large-v3", folder)


def test_missing_unexpected_and_misshaped_tensors(tiny, tmp_path):
    state = dict(tiny.model.state_dict())
    del state["layers.1.fc2.bias"]
    state["layers.0.self_attn.k_proj.bias"] = torch.zeros(64)
    state["layers.0.fc1.weight"] = torch.zeros(100, 64)
    from safetensors.torch import save_file
    folder = tmp_path / "broken"
    folder.mkdir()
    save_file({"model.encoder." + k: v.contiguous() for k, v in state.items()},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(TINY.to_dict()))
    with pytest.raises(ModelError) as info:
        load_whisper("whisper-tiny", folder)
    message = str(info.value)
    for part in ("missing 1: layers.1.fc2.bias", "unexpected 1: layers.0.self_attn.k_proj.bias",
                 "layers.0.fc1.weight (100, 64) (expected (256, 64))"):
        assert part in message


def test_unreadable_weights(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="cannot read weights"):
        load_whisper("whisper-base", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no model.safetensors"):
        load_whisper("whisper-base", tmp_path / "empty")
    with pytest.raises(ModelError, match="not found"):
        load_whisper("whisper-base", tmp_path / "absent.pt")
    (tmp_path / "c").mkdir()
    torch.save({"x": torch.zeros(2)}, tmp_path / "c" / "w.pt")
    with pytest.raises(ModelError, match="conv1.weight"):
        load_whisper("whisper-base", tmp_path / "c" / "w.pt")


def test_no_weights_and_download_disabled(tmp_path):
    with pytest.raises(ModelError) as info:
        load_whisper("whisper-small", cache_dir=tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path / "whisper" / "small") in message
    assert "--weights" in message and "openai/whisper-small" in message
    assert "huggingface_hub" in message and "whisper-small" in message


def fake_hub(monkeypatch, source: Path | None, calls: list):
    """Put a fake huggingface_hub whose hf_hub_download copies files from ``source``."""
    module = types.ModuleType("huggingface_hub")

    def hf_hub_download(repo_id, filename, local_dir=None, **kwargs):
        calls.append((repo_id, filename))
        if source is None:
            raise OSError("network unreachable")
        target = Path(local_dir) / filename
        shutil.copyfile(source / filename, target)
        return str(target)

    module.hf_hub_download = hf_hub_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", module)


def test_mocked_download_lands_in_cache(tiny, tiny_dir, tmp_path, monkeypatch):
    calls = []
    fake_hub(monkeypatch, tiny_dir, calls)
    loaded = load_whisper("whisper-tiny", cache_dir=tmp_path)
    folder = whisper_cache_folder("tiny", tmp_path)
    assert folder == tmp_path / "whisper" / "tiny"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert {c[0] for c in calls} == {"openai/whisper-tiny"}
    assert sorted(c[1] for c in calls) == ["config.json", "model.safetensors"]
    assert loaded.weights_id == tiny.weights_id
    assert loaded.source == str(folder / "model.safetensors")
    again = load_whisper("whisper-tiny", cache_dir=tmp_path)  # from the cache: no download
    assert len(calls) == 2 and again.weights_id == tiny.weights_id


def test_failed_download_gives_one_clear_error(tmp_path, monkeypatch):
    calls = []
    fake_hub(monkeypatch, None, calls)
    with pytest.raises(ModelError) as info:
        load_whisper("whisper-base", cache_dir=tmp_path)
    message = str(info.value)
    assert calls and "network unreachable" in message
    assert str(tmp_path / "whisper" / "base") in message and "--weights" in message
    assert not any((tmp_path / "whisper" / "base").iterdir())  # nothing half-written left
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(ModelError, match="pip install huggingface_hub"):
        load_whisper("whisper-base", cache_dir=tmp_path)


# --------------------------------------------------------------------------------------
# long signals: chunks encoded alone, progress within one file
# --------------------------------------------------------------------------------------

def test_encode_signals_chunks_alone_and_progress(tiny, capsys):
    """encode_signals: a signal of at most 30 s equals encode() of it bit for bit; a longer
    one is its whole-signal log-Mel cut into 30 s chunks, each encoded alone, joined in
    order (independent of the thread count); a signal over a minute shows an 'encoding'
    bar in seconds of audio, shorter ones none."""
    from binser.features import PROGRESS_MIN_S, encode_signals

    rng = np.random.default_rng(3)
    long = (0.1 * rng.standard_normal(int(SAMPLE_RATE * 65))).astype(np.float32)
    short = long[:SAMPLE_RATE * 2].copy()
    one, two = (encode_signals(tiny, [long, short], (1, 2), num_threads=n) for n in (1, 2))
    assert np.array_equal(two[1][2], tiny.encode([short], (2,))[0][2])
    chunks = tiny.mel_chunks(long)
    assert [c.shape[1] for c in chunks] == [CHUNK_FRAMES, CHUNK_FRAMES, 500]
    by_hand = np.concatenate([tiny.encode_chunk(c, (2,))[2] for c in chunks])
    assert np.array_equal(one[0][2], by_hand) and np.array_equal(two[0][2], by_hand)
    assert one[0][1].shape == (1500 + 1500 + 250, TINY.d_model)
    capsys.readouterr()
    encode_signals(tiny, [short], (1,), progress=True)
    assert "encoding" not in capsys.readouterr().err
    assert len(long) / SAMPLE_RATE > PROGRESS_MIN_S
    encode_signals(tiny, [long], (1,), progress=True)
    err = capsys.readouterr().err
    assert "encoding" in err and "/65.0" in err      # seconds of audio, this file's total
