"""Reliability: messages name the real cause and the CLI's words.

One test (or a few) per kind of defect: files with more than two channels and
``--channels I,J``; the C decoders' own chatter on stderr; files that are not audio of their
kind and symbolic link loops; ``binser inspect``'s text; a help string for every argument;
the fusion pooling the user never set; weights files that are no weights.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from binser.audio import audio_info, load_audio, quiet_decoders, without_chatter
from binser.cli import build_parser, main
from binser.config import FrontEndConfig
from binser.errors import AudioError, ConfigError, ModelError

SR = 16000
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _binser(*argv: object, timeout: float = 240) -> tuple[int, str, str]:
    done = subprocess.run([sys.executable, "-m", "binser", *map(str, argv)],
                          capture_output=True, text=True, timeout=timeout, env=ENV)
    return done.returncode, done.stdout, done.stderr


def _tone(seconds: float, freq: float, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _one_line_error(stderr: str, *words: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("binser")]
    assert len(errors) == 1 and "error:" in errors[0], stderr
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


@pytest.fixture
def four_channels(tmp_path) -> Path:
    """1 s, 4 channels: 220, 330, 440 and 550 Hz tones of different levels."""
    audio = np.stack([_tone(1.0, f, level) for f, level in
                      ((220, 0.3), (330, 0.2), (440, 0.1), (550, 0.05))], axis=1)
    path = tmp_path / "four.wav"
    sf.write(path, audio, SR, subtype="FLOAT")
    return path


@pytest.fixture
def mono(tmp_path) -> Path:
    path = tmp_path / "mono.wav"
    sf.write(path, _tone(1.0, 220), SR)
    return path


@pytest.fixture
def stereo(tmp_path) -> Path:
    left = _tone(1.0, 220)
    right = 0.5 * np.roll(left, 5) + _tone(1.0, 700, 0.05)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SR)
    return path


# ------------------------------------------------------------------ 1. --channels I,J

def test_more_than_two_channels_names_the_cli_option_and_the_keyword(four_channels):
    with pytest.raises(AudioError) as caught:
        load_audio(four_channels)
    assert caught.value.path == four_channels
    assert "4 channels" in caught.value.cause
    assert "--channels I,J" in caught.value.cause and "channels=(i, j)" in caught.value.cause


def test_inspect_channels_picks_left_and_right(four_channels, capsys):
    assert main(["inspect", str(four_channels), "--channels", "2,0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["channels"] == 4 and result["picked_channels"] == [2, 0]
    levels = result["stats"]["rms_dbfs"]   # left = channel 2 (0.1), right = channel 0 (0.3)
    assert levels[0] == pytest.approx(20 * np.log10(0.1 / np.sqrt(2)), abs=0.01)
    assert levels[1] == pytest.approx(20 * np.log10(0.3 / np.sqrt(2)), abs=0.01)


@pytest.mark.parametrize("value,words", [("1,1", "two different channels"),
                                         ("a,b", "two 0-based channel indices"),
                                         ("3", "two 0-based channel indices"),
                                         ("0,1,2", "two 0-based channel indices"),
                                         ("-1,2", ">= 0")])
def test_channels_option_is_checked_up_front(value, words, four_channels, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["inspect", str(four_channels), f"--channels={value}"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "argument --channels" in err and words in err, err


def test_channel_out_of_range_is_a_per_file_error(four_channels, mono):
    code, out, err = _binser("inspect", four_channels, "--channels", "0,7")
    assert code == 2 and out == ""
    _one_line_error(err, str(four_channels), "channel 7", "--channels", "out of range",
                    "4 channel(s)")
    code, _, err = _binser("inspect", mono, "--channels", "0,1")
    assert code == 2
    _one_line_error(err, str(mono), "channel 1", "1 channel(s)")


def test_frontend_channels_are_checked_recorded_and_keyed():
    import hashlib

    config = FrontEndConfig(channels=[2, 3])   # a JSON list (a saved model) becomes a tuple
    assert config.channels == (2, 3)
    assert FrontEndConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    digests = {FrontEndConfig(channels=c).digest() for c in (None, (0, 1), (1, 0), (2, 3))}
    assert len(digests) == 4   # features of other channels never share a cache entry
    # without --channels the key is the one of caches written before the field existed
    old = {k: v for k, v in FrontEndConfig().to_dict().items() if k != "channels"}
    old_digest = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert FrontEndConfig().digest() == old_digest
    for bad in [(1, 1), (-1, 0), ("0", 1), (0,), 3]:
        with pytest.raises(ConfigError, match="--channels I,J"):
            FrontEndConfig(channels=bad)


def test_experiment_settings_carry_channels_from_the_cli():
    from binser.cli import settings_from_args

    args = build_parser().parse_args(["experiment", "--dataset", "folder", "--root", "x",
                                      "--out", "y", "--backbone", "efficientnet_lite0",
                                      "--channels", "3,1"])
    assert settings_from_args(args, "folder", "x").frontend.channels == (3, 1)


def test_scan_with_channels_uses_the_picked_pair(tmp_path):
    from binser.demo import DemoSpec, make_demo_corpus

    root = make_demo_corpus(tmp_path / "corpus", DemoSpec(n_speakers=3, per_emotion=1,
                                                          min_duration_s=0.5,
                                                          max_duration_s=0.6))
    for path in root.rglob("*.wav"):   # channels 1 and 2: the original L and R
        x, sr = sf.read(path, dtype="float32")
        sf.write(path, np.concatenate([x[:, :1], x, x[:, :1]], axis=1), sr, subtype="FLOAT")
    code, _, err = _binser("scan", "folder", root, "--quiet")   # no file is usable
    assert code == 2 and "Traceback" not in err
    assert "no usable input file among 12" in err and err.count("--channels I,J") == 12
    code, out, err = _binser("scan", "folder", root, "--quiet", "--channels", "1,2")
    assert code == 0 and "cannot use (left out with --on-error skip): 0" in out, out
    assert "bit-identical channels (Side view all zeros): 0" in out
    code, out, _ = _binser("scan", "folder", root, "--quiet", "--channels", "0,3")
    assert "bit-identical channels (Side view all zeros): 12" in out, out


def test_file_views_read_the_picked_channels(four_channels):
    from binser.features import file_views

    signals, _ = file_views(four_channels, FrontEndConfig(channels=(1, 3)))
    picked = load_audio(four_channels, channels=(1, 3))
    np.testing.assert_array_equal(signals["left"], picked[0])
    np.testing.assert_array_equal(signals["right"], picked[1])


# ------------------------------------------------------------------ 2. decoder chatter

def _mp3_with_wrong_xing_size(path: Path) -> Path:
    """An MP3 whose Xing header states a wrong byte count (mpg123 warns about it)."""
    if "MP3" not in sf.available_formats():   # pragma: no cover
        pytest.skip("this libsndfile writes no MP3")
    sf.write(path, np.stack([_tone(3.0, 220), _tone(3.0, 330, 0.2)], axis=1), SR,
             format="MP3")
    data = bytearray(path.read_bytes())
    at = data.find(b"Xing")
    flags = int.from_bytes(data[at + 4: at + 8], "big")
    if at < 0 or not flags & 2:   # pragma: no cover
        pytest.skip("the MP3 encoder wrote no Xing byte count")
    field = at + 8 + (4 if flags & 1 else 0)
    data[field: field + 4] = (10 ** 6).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return path


def test_decoder_chatter_is_not_printed(tmp_path):
    path = _mp3_with_wrong_xing_size(tmp_path / "xing.mp3")
    code, out, err = _binser("inspect", path)
    assert code == 0 and "channels:" in out
    assert err == "", err   # no "Warning: Xing stream size off ..." from mpg123
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code, _, err = _binser("inspect", cut)
    assert code == 2
    _one_line_error(err, str(cut), "truncated")
    assert not re.search(r"@ 0x|^Warning:|^Note:", err, re.M), err


def test_quiet_decoders_drop_only_the_chatter(capfd):
    with quiet_decoders():
        with quiet_decoders():   # nested (other threads): one redirection
            os.write(2, b"[mp3float @ 0x55d0a1b2] Header missing\n")
        os.write(2, b"Note: Trying to resync...\nbinser keeps this\n")
    os.write(2, b"and this\n")
    assert capfd.readouterr().err == "binser keeps this\nand this\n"
    assert without_chatter(b"\rscan: 50%|##\n[src/libmpg123/parse.c:1099] error: x\n") == \
        b"\rscan: 50%|##\n"


def test_ffmpeg_logging_is_off_while_decoding():
    av = pytest.importorskip("av")
    before = av.logging.get_level()
    av.logging.set_level(av.logging.VERBOSE)
    try:
        with quiet_decoders():
            assert av.logging.get_level() is None
        assert av.logging.get_level() == av.logging.VERBOSE
    finally:
        av.logging.set_level(before)


# ------------------------------------------------------------------ 3. not audio, link loops

def test_libsndfile_does_not_say_a_present_file_is_missing(tmp_path):
    path = tmp_path / "random.flac"   # these bytes pass libsndfile's MP3 probe, then fail
    path.write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(AudioError) as caught:
        load_audio(path)
    assert "does not exist" not in caught.value.cause
    assert "not a recognised audio or video file" in caught.value.cause


def test_random_bytes_named_flac_are_not_audio(tmp_path):
    path = tmp_path / "random.flac"
    path.write_bytes(np.random.default_rng(0).bytes(20000))
    for call in (audio_info, load_audio):
        with pytest.raises(AudioError) as caught:
            call(path)
        assert "not a decodable audio file" in caught.value.cause
        assert "FLAC" in caught.value.cause and "sample rate 0" not in caught.value.cause
    code, _, err = _binser("inspect", path)
    assert code == 2
    _one_line_error(err, str(path), "not a decodable audio file", "not valid FLAC")


def test_symbolic_links_that_lead_nowhere_are_named_so(tmp_path):
    loop_a, loop_b, broken = tmp_path / "a.wav", tmp_path / "b.wav", tmp_path / "c.wav"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    broken.symlink_to(tmp_path / "gone.wav")
    with pytest.raises(AudioError, match="symbolic link loop"):
        load_audio(loop_a)
    with pytest.raises(AudioError, match="broken symbolic link"):
        audio_info(broken)
    code, _, err = _binser("inspect", loop_a)
    assert code == 2
    _one_line_error(err, str(loop_a), "symbolic link loop")
    assert "not found" not in err


def test_predict_names_link_loops_and_non_audio(tmp_path):
    from conftest import train_tiny_model

    _, model, root, _ = train_tiny_model(tmp_path)
    loop, random_flac = tmp_path / "loop.wav", tmp_path / "random.flac"
    loop.symlink_to(loop)
    random_flac.write_bytes(np.random.default_rng(0).bytes(20000))
    good = next(root.rglob("*.wav"))
    code, out, err = _binser("predict", model, loop, random_flac, good, "--quiet")
    assert code == 1 and "Traceback" not in err
    lines = out.splitlines()
    assert any(str(loop) in line and "symbolic link loop" in line for line in lines), out
    assert any(str(random_flac) in line and "not a decodable audio file" in line
               for line in lines), out


# ------------------------------------------------------------------ 5. inspect's text

def _facts(out: str) -> dict[str, str]:
    labels = [line.split(":", 1)[0] for line in out.splitlines()]
    assert len(labels) == len(set(labels)), out          # one line per fact
    for line in out.splitlines():
        assert re.match(r"^[A-Za-z][A-Za-z /-]*: +\S", line), line   # "label:  value"
    return {k: v.strip() for k, v in (line.split(":", 1) for line in out.splitlines())}


def test_inspect_text_is_one_rounded_fact_a_line(stereo, capsys):
    assert main(["inspect", str(stereo)]) == 0
    out = capsys.readouterr().out
    facts = _facts(out)
    assert facts["channels"] == "2 (stereo)"
    assert facts["identical channels"] == "no"
    assert re.fullmatch(r"left -\d+\.\d\d dBFS, right -\d+\.\d\d dBFS", facts["RMS level"])
    assert re.fullmatch(r"-?\d\.\d{3}", facts["L/R correlation"])
    assert not re.search(r"\d\.\d{4,}", out), out        # no 15-digit numbers


def test_inspect_json_keeps_full_precision(stereo, capsys):
    from binser.views import channel_stats

    assert main(["inspect", str(stereo), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)["stats"]
    expected = channel_stats(load_audio(stereo), SR)
    assert stats["rms_dbfs"] == expected["rms_dbfs"]
    assert stats["correlation"] == expected["correlation"]


@pytest.mark.parametrize("figure", [False, True])
def test_inspect_says_mono_with_or_without_a_figure(figure, mono, tmp_path, capsys):
    argv = ["inspect", str(mono)] + (["-o", str(tmp_path / "views.png")] if figure else [])
    assert main(argv) == 0
    captured = capsys.readouterr()
    facts = _facts(captured.out if not figure else "\n".join(
        line for line in captured.out.splitlines() if not line.startswith("figure")))
    assert facts["channels"] == "1 (mono)"
    assert "identical channels" not in facts and "L/R correlation" not in facts
    warnings = [line for line in captured.err.splitlines() if line.startswith("binser:")]
    assert len(warnings) == 1 and "warning" in warnings[0] and "mono" in warnings[0]
    assert "collapse" in warnings[0] and "MonoInputWarning" not in captured.err


# ------------------------------------------------------------------ 6. help strings

def _arguments(parser: argparse.ArgumentParser, prefix: str = "binser"):
    """(command, action) for every argument of every (sub)command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", argparse.Action([name], name, help=helps.get(name))
                yield from _arguments(sub, f"{prefix} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield prefix, action


def test_every_argument_of_every_command_has_help():
    parser = build_parser()
    missing = [f"{command} {'/'.join(action.option_strings) or action.dest}"
               for command, action in _arguments(parser)
               if not (action.help or "").strip() or action.help == argparse.SUPPRESS]
    assert not missing, missing
    commands = {command for command, _ in _arguments(parser)}
    assert {"binser stream", "binser serve", "binser inspect"} <= commands
    for action in parser._subparsers._group_actions[0].choices.values():
        assert action.format_help()   # every help string formats (no stray '%')


# ------------------------------------------------------------------ 7. fusion pooling

def _settings(**kwargs):
    from binser.experiment import ExperimentSettings

    return ExperimentSettings(dataset="folder", root=".", **kwargs)


@pytest.mark.parametrize("backbone,poolings,fused", [
    ("efficientnet_lite0", ("stats",), "stats"),
    ("efficientnet_lite0", ("global-avg", "block-max"), "block-max"),
    ("whisper-base", ("block-max", "block-avg"), "block-max"),
    ("whisper-base", ("block-avg", "stats"), "stats")])
def test_unset_fusion_pooling_follows_the_poolings_run(backbone, poolings, fused):
    settings = _settings(backbone=backbone, poolings=poolings)
    settings.validate()
    assert settings.resolved_fusion_pooling() == fused


def test_explicit_fusion_pooling_not_run_names_both_options(tmp_path, capsys):
    with pytest.raises(ConfigError, match="--fusion-pooling block-max.*--poolings stats"):
        _settings(poolings=("stats",), fusion_pooling="block-max").validate()
    code = main(["experiment", "--dataset", "folder", "--root", str(tmp_path), "--out",
                 str(tmp_path / "out"), "--backbone", "efficientnet_lite0", "--poolings",
                 "stats", "--fusion-pooling", "block-max", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--fusion-pooling block-max" in err and "--poolings stats" in err


def test_train_pooling_and_fusion_pooling_are_one_option():
    parser = build_parser()
    base = ["train", "--dataset", "folder", "--root", "x", "--out", "y"]
    assert parser.parse_args(base + ["--pooling", "stats"]).fusion_pooling == "stats"
    assert parser.parse_args(base + ["--fusion-pooling", "stats"]).fusion_pooling == "stats"


# ------------------------------------------------------------------ 8. weights that are no weights

@pytest.mark.parametrize("suffix,expected", [(".pth", "not a PyTorch checkpoint"),
                                             (".safetensors", "not a safetensors file")])
def test_audio_given_as_weights_is_named_for_what_it_is(suffix, expected, tmp_path, stereo):
    from binser.backbones.imagenet import read_state_dict

    path = tmp_path / f"weights{suffix}"
    path.write_bytes(stereo.read_bytes())
    with pytest.raises(ModelError) as caught:
        read_state_dict(path)
    message = str(caught.value)
    assert expected in message and "RIFF (WAV" in message
    assert "pop from empty list" not in message and "IndexError" not in message


def test_cli_weights_of_the_wrong_kind_is_one_line(tmp_path, stereo):
    code, _, err = _binser("experiment", "--dataset", "folder", "--root", tmp_path / "none",
                           "--out", tmp_path / "out", "--backbone", "efficientnet_lite0",
                           "--weights", stereo, "--quiet")
    assert code == 2
    _one_line_error(err, "--weights", "not a weights file")


def test_predict_channels_picks_the_pair_for_every_path(tmp_path, capsys):
    """predict --channels I,J on a 4-channel file == predict of a stereo file holding
    channels I and J: label, scores and timeline (whole-file and timeline reads alike)."""
    from conftest import train_tiny_model

    _, folder, root, _ = train_tiny_model(tmp_path / "m")
    x, _ = sf.read(sorted(Path(root).glob("*/*.wav"))[0], dtype="float32", always_2d=True)
    four = tmp_path / "four.wav"
    sf.write(four, np.stack([x[:, 1] * 0.3, x[:, 0], x[:, 0] * 0.5, x[:, 1]], axis=1), SR,
             subtype="FLOAT")
    pair = tmp_path / "pair.wav"
    sf.write(pair, np.stack([x[:, 0], x[:, 1]], axis=1), SR, subtype="FLOAT")
    assert main(["predict", str(folder), str(four), "--channels", "1,3", "--json",
                 "--timeline", "--quiet"]) == 0
    (picked,) = json.loads(capsys.readouterr().out)
    assert main(["predict", str(folder), str(pair), "--json", "--timeline", "--quiet"]) == 0
    (plain,) = json.loads(capsys.readouterr().out)
    assert picked["label"] == plain["label"]
    assert picked["scores"] == pytest.approx(plain["scores"], abs=1e-9)
    assert len(picked["timeline"]) == len(plain["timeline"]) > 1
    for a, b in zip(picked["timeline"], plain["timeline"]):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-9)
    assert main(["predict", str(folder), str(four), "--quiet"]) == 1     # no pair: named
    assert "--channels I,J" in capsys.readouterr().out


def test_stream_and_per_channel_apply_predicts_input_checks(tmp_path, capsys):
    """binser stream FILE and predict --per-channel refuse what predict refuses (truncated,
    all-zero, too short), naming the file and the cause; the binser command shows binser's
    own warnings as one 'binser: warning:' line (no source path)."""
    from conftest import train_tiny_model

    _, folder, root, _ = train_tiny_model(tmp_path / "m")
    good = sorted(Path(root).glob("*/*.wav"))[0]
    x, _ = sf.read(good, dtype="float32", always_2d=True)
    whole = tmp_path / "whole.wav"
    sf.write(whole, x, SR, subtype="PCM_16")
    data = whole.read_bytes()
    bad = {"truncated": data[:len(data) // 2 + 1], "silent": None, "too short": None}
    paths = {}
    for kind in bad:
        paths[kind] = tmp_path / f"{kind.replace(' ', '_')}.wav"
    paths["truncated"].write_bytes(bad["truncated"])
    sf.write(paths["silent"], np.zeros((SR, 2), np.float32), SR)
    sf.write(paths["too short"], x[:10], SR)
    for kind, path in paths.items():
        assert main(["stream", str(folder), str(path), "--fast"]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and kind in err, err
        assert main(["predict", str(folder), str(path), "--per-channel", "--quiet"]) == 1
        out = capsys.readouterr().out
        assert f"{path}: ERROR" in out and kind in out, out
    mono = tmp_path / "mono.wav"
    sf.write(mono, x[:, 0], SR)
    run = subprocess.run([sys.executable, "-m", "binser", "predict", str(folder), str(mono),
                          "--quiet"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if "mono" in line]
    assert lines and all(line.startswith("binser: warning: ") for line in lines), run.stderr
    assert ".py:" not in run.stderr
