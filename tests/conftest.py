"""Shared fixtures. EMOVO is read from ../shared/data/emovo (never copied into the repo)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EMOVO_ROOT = PROJECT_ROOT.parent / "shared" / "data" / "emovo"


@pytest.fixture(scope="session")
def emovo_root() -> Path:
    """The EMOVO corpus folder; skips the test with a message where it is absent."""
    if not (EMOVO_ROOT / "f1").is_dir():
        pytest.skip(f"EMOVO corpus not found at {EMOVO_ROOT} (it lives in ../shared/data/emovo "
                    "beside the project; tests that need it are skipped)")
    return EMOVO_ROOT


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's networks on one torch thread (far steadier on a busy machine); the
    previous setting is restored afterwards. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_tiny_model(base: Path):
    """A tiny image-CNN model (32 px) trained on a 3-speaker synthetic corpus under ``base``,
    saved to ``base / "model"``: ``(in-memory model, model folder, corpus root, settings)``."""
    from binser.demo import DemoSpec, make_demo_corpus
    from binser.experiment import ExperimentSettings
    from binser.model import train_model

    root = make_demo_corpus(base / "corpus",
                            DemoSpec(n_speakers=3, per_emotion=2, max_duration_s=1.2))
    settings = ExperimentSettings(dataset="folder", root=str(root), input_size=32,
                                  synthetic=True, cache_dir=str(base / "cache"))
    model = train_model(settings, base / "model", progress=False)
    return model, base / "model", root, settings


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained on the synthetic corpus (a few seconds), loaded from disk:
    ``(model, model folder, corpus root)``; one per test module."""
    from binser.model import Model

    _, folder, root, _ = train_tiny_model(tmp_path_factory.mktemp("tiny-model"))
    return Model.load(folder), folder, root


@pytest.fixture(scope="module")
def model(trained):
    """The loaded tiny model of :func:`trained`."""
    return trained[0]


@pytest.fixture(scope="module")
def wav(trained):
    """One stereo WAV file of the tiny model's corpus."""
    return sorted(Path(trained[2]).glob("*/*.wav"))[0]


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Python's temporary folder pointed here (uploads land in it), so a test sees every
    temporary file the server left behind."""
    import tempfile

    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


TINY_WHISPER = dict(d_model=64, encoder_layers=2, encoder_attention_heads=1, encoder_ffn_dim=128,
                    num_mel_bins=80, max_source_positions=1500)


def save_tiny_whisper(folder: Path) -> Path:
    """A random 64-D, 2-layer encoder saved as a Hugging Face folder (model.safetensors with
    the full model's names + config.json). One head, as load_whisper infers without config."""
    import torch
    from safetensors.torch import save_file

    from binser.backbones.whisper import WhisperConfig, WhisperEncoder

    config = WhisperConfig(**TINY_WHISPER)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = WhisperEncoder(config).eval()
    folder.mkdir(parents=True)
    save_file({"model.encoder." + k: v.contiguous() for k, v in encoder.state_dict().items()},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    return folder


def train_tiny_whisper_model(base: Path, layer: int = 1):
    """A four-view model on the tiny random encoder (:func:`save_tiny_whisper`), trained on a
    3-speaker synthetic corpus under ``base``: ``(model folder, corpus root)``."""
    from binser.demo import DemoSpec, make_demo_corpus
    from binser.experiment import ExperimentSettings
    from binser.model import train_model

    root = make_demo_corpus(base / "corpus",
                            DemoSpec(n_speakers=3, per_emotion=2, max_duration_s=1.2))
    settings = ExperimentSettings(dataset="folder", root=str(root), backbone="whisper-tiny",
                                  weights=str(save_tiny_whisper(base / "hf")), layer=layer,
                                  synthetic=True, cache_dir=str(base / "cache"))
    train_model(settings, base / "model", progress=False)
    return base / "model", root


# ------------------------------------------------------------------------------ browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by playwright (skipped, with the reason, where either
    is missing or cannot start)."""
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright (test extra) is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium): browser test skipped")
    try:
        pw = sync_api.sync_playwright().start()
    except Exception as exc:   # noqa: BLE001
        pytest.skip(f"playwright cannot start: {exc}")
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    except Exception as exc:   # noqa: BLE001
        pw.stop()
        pytest.skip(f"Chromium cannot start headless here: {exc}")
    yield b
    b.close()
    pw.stop()
