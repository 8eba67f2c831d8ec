"""binser scenes: HRIR levels against the KEMAR data itself, SNR/SIR as defined, RT60 as the
tail's decay, determinism per seed and file, resume, the manifest read back as a corpus with
speaker-independent folds, and one-line errors for bad input (API and CLI).

Tiny synthetic corpora are made in tmp_path; the MIT KEMAR HRIRs are read from
../shared/data/hrtf/mit-kemar.npz (tests skip with a message where it is absent)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from binser.cli import main
from binser.corpora import corpus
from binser.errors import ConfigError, CorpusError
from binser.evaluation import folds, speaker_independence
from binser.scenes import SceneSettings, load_hrir, make_scenes, render_scene
from binser.scenes.acoustics import Room, room_brir
from binser.scenes.generate import convolve, draw_interferer_azimuth
from binser.scenes.run import MANIFEST, SETTINGS_FILE

SR = 16000
KEMAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "hrtf" / "mit-kemar.npz"


@pytest.fixture(scope="module")
def kemar() -> Path:
    if not KEMAR.is_file():
        pytest.skip(f"MIT KEMAR HRIRs not found at {KEMAR} (they live in "
                    "../shared/data/hrtf beside the project)")
    return KEMAR


@pytest.fixture(scope="module")
def hrirs(kemar):
    return load_hrir(kemar)


def _speech_like(seconds: float, seed: int) -> np.ndarray:
    """A voiced, amplitude-modulated harmonic signal with some noise (mono)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(SR * seconds)) / SR
    f0 = 110 + 60 * seed % 90 + 20 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
    return (0.1 * voice * envelope + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def make_corpus(root: Path, speakers=("s1", "s2", "s3"), per_speaker: int = 2,
                seconds: float = 0.7, labels=("anger", "joy")) -> Path:
    """A csv corpus of stereo FLACs: per speaker, ``per_speaker`` files."""
    rows = []
    for i, speaker in enumerate(speakers):
        for k in range(per_speaker):
            x = _speech_like(seconds + 0.1 * k, seed=10 * i + k)
            name = f"{speaker}/{speaker}_{k}.flac"
            (root / speaker).mkdir(parents=True, exist_ok=True)
            sf.write(root / name, np.stack([x, 0.8 * x], axis=1), SR)
            rows.append((name, labels[k % len(labels)], speaker))
    with open(root / "list.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "speaker"])
        writer.writerows(rows)
    return root


@pytest.fixture
def small(tmp_path):
    return corpus("csv", make_corpus(tmp_path / "src"))


def _settings(kemar, **kw) -> SceneSettings:
    return SceneSettings(hrir=str(kemar), **kw)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / MANIFEST, newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------ HRIRs


def _ild(stereo: np.ndarray) -> float:
    left, right = np.asarray(stereo, float)
    return 10 * np.log10(np.sum(left ** 2) / np.sum(right ** 2))


def _npz_ild_below_8k(azimuth: float) -> float:
    """The KEMAR data's own level difference at (azimuth, 0), from the 44.1 kHz IRs'
    spectra up to 8 kHz (what survives at 16 kHz)."""
    data = np.load(KEMAR)
    src = data["sources"]
    i = int(np.flatnonzero((np.mod(src[:, 0], 360) == np.mod(azimuth, 360)) & (src[:, 1] == 0))[0])
    spectrum = np.abs(np.fft.rfft(data["ir"][i].astype(float), n=4096, axis=-1)) ** 2
    band = np.fft.rfftfreq(4096, 1 / float(data["samplerate"])) < 7600
    return float(10 * np.log10(spectrum[0, band].sum() / spectrum[1, band].sum()))


@pytest.mark.parametrize("azimuth", [90.0, -90.0])
def test_hrir_level_difference_matches_the_data(hrirs, azimuth):
    noise = np.random.default_rng(0).standard_normal(5 * SR)
    ears = convolve(noise, hrirs.ir[int(hrirs.nearest(azimuth, 0.0))])
    reference = _npz_ild_below_8k(azimuth)
    assert np.sign(_ild(ears)) == np.sign(azimuth) and abs(reference) > 5   # +90 = left
    assert _ild(ears) == pytest.approx(reference, abs=0.5)                  # size: 0.5 dB


def test_hrir_front_gives_equal_channels(hrirs):
    i = int(hrirs.nearest(0.0, 0.0))
    assert hrirs.azimuth[i] == 0 and hrirs.elevation[i] == 0
    ears = convolve(np.random.default_rng(1).standard_normal(2 * SR), hrirs.ir[i])
    assert abs(_ild(ears)) < 0.05                                   # within 0.05 dB
    assert np.max(np.abs(ears[0] - ears[1])) <= 1e-6 * np.max(np.abs(ears))


def test_hrirs_resampled_once_to_16k(hrirs):
    assert hrirs.ir.shape == (710, 2, 186) and hrirs.source_rate == 44100
    assert hrirs.nearest(-90.0) == hrirs.nearest(270.0)


def test_sofa_file_reads_like_the_npz(tmp_path, kemar, hrirs):
    sofar = pytest.importorskip("sofar", reason="binser[sofa] (sofar) not installed")
    data = np.load(kemar)
    sofa = sofar.Sofa("SimpleFreeFieldHRIR")
    sofa.Data_IR = data["ir"].astype(float)
    sofa.Data_SamplingRate = float(data["samplerate"])
    sofa.SourcePosition = data["sources"].astype(float)
    sofar.write_sofa(str(tmp_path / "kemar.sofa"), sofa)
    from_sofa = load_hrir(tmp_path / "kemar.sofa")
    np.testing.assert_allclose(from_sofa.ir, hrirs.ir, atol=1e-6)
    np.testing.assert_allclose(from_sofa.azimuth, hrirs.azimuth, atol=1e-4)


def test_diffuse_noise_matches_independent_sources_through_the_hrirs(hrirs):
    """The per-bin Cholesky draw has the cross-spectra of independent white noises from each
    direction, each convolved with its HRIR and summed (computed here the plain way)."""
    from scipy.signal import csd, welch

    from binser.scenes import HRIRSet, diffuse_noise

    pick = np.arange(0, len(hrirs.ir), 89)                     # 8 directions
    few = HRIRSet(ir=hrirs.ir[pick], azimuth=hrirs.azimuth[pick],
                  elevation=hrirs.elevation[pick], path=hrirs.path, sha256="", source_rate=SR)
    n, rng = 8 * SR, np.random.default_rng(0)
    plain = sum(convolve(rng.standard_normal(n), few.ir[k]) for k in range(len(pick)))
    drawn = diffuse_noise(np.random.default_rng(1), few, n)
    def coherency(x):   # complex: magnitude and interaural phase
        f, cross = csd(x[0], x[1], fs=SR, nperseg=512)
        return f, cross / np.sqrt(welch(x[0], fs=SR, nperseg=512)[1]
                                  * welch(x[1], fs=SR, nperseg=512)[1])

    f, c_plain = coherency(plain)
    _, c_drawn = coherency(drawn)
    assert np.mean(np.abs(c_drawn - c_plain)) < 0.1
    assert np.mean(np.abs(np.conj(c_drawn) - c_plain)) > 0.2     # the phase is tested too
    for ear in (0, 1):
        band = (f > 100) & (f < 7000)
        p_plain = welch(plain[ear], fs=SR, nperseg=512)[1][band]
        p_drawn = welch(drawn[ear], fs=SR, nperseg=512)[1][band]
        ratio_db = 10 * np.log10(p_drawn / p_plain)
        assert np.median(np.abs(ratio_db - np.median(ratio_db))) < 0.5   # same shape


def test_diffuse_noise_is_coherent_low_and_incoherent_high(hrirs):
    from scipy.signal import coherence

    from binser.scenes import diffuse_noise

    x = diffuse_noise(np.random.default_rng(0), hrirs, 6 * SR, "pink")
    f, c = coherence(x[0], x[1], fs=SR, nperseg=1024)
    assert c[(f >= 50) & (f < 200)].mean() > 0.6 and c[f >= 1000].mean() < 0.05


# ------------------------------------------------------------------ levels and the room


def test_snr_and_sir_in_the_written_file(small, kemar, tmp_path):
    settings = _settings(kemar, snr="7", sir="3", interferer_prob=1.0, rt60="0.3:0.3")
    out = tmp_path / "scenes"
    make_scenes(small, out, settings, progress=False)
    u = small[0]
    rel = u.path.relative_to(small.root).as_posix()
    from binser.scenes import load_mono

    others = [(v.path.relative_to(small.root).as_posix(), v.speaker, v.path)
              for v in small if v.speaker != u.speaker]
    scene = render_scene(load_mono(u.path), rel, settings, load_hrir(kemar), others, load_mono)
    energy = lambda x: float(np.sum(np.asarray(x, float) ** 2))  # noqa: E731
    assert 10 * np.log10(energy(scene.target) / energy(scene.noise)) == pytest.approx(7, abs=0.5)
    assert 10 * np.log10(energy(scene.target) / energy(scene.interferer)) == \
        pytest.approx(3, abs=0.5)
    written, rate = sf.read(out / rel, dtype="float64", always_2d=True)
    assert rate == SR and written.shape == (load_mono(u.path).size, 2)
    residual = written.T - scene.target - scene.interferer       # noise + 16-bit rounding
    assert 10 * np.log10(energy(scene.target) / energy(residual)) == pytest.approx(7, abs=0.5)
    row = next(r for r in _rows(out) if r["source"] == rel)
    assert float(row["snr_db"]) == 7 and float(row["sir_db"]) == 3


def _schroeder_rt60(ir: np.ndarray, start: int) -> float:
    """RT60 from the backward-integrated energy of ir[:, start:] (both ears), fitted from
    -5 to -25 dB (T20 x 3)."""
    e = np.sum(ir[:, start:] ** 2, axis=0)[::-1].cumsum()[::-1]
    db = 10 * np.log10(e / e[0])
    k = np.flatnonzero((db <= -5) & (db >= -25))
    slope = np.polyfit(k / SR, db[k], 1)[0]
    return -60.0 / slope


@pytest.mark.parametrize("rt60", [0.3, 0.8])
def test_tail_decays_at_the_drawn_rt60(hrirs, rt60):
    room = Room(dims=np.array([7.0, 5.0, 3.0]), head=np.array([3.0, 2.5, 1.5]), yaw=0.0,
                rt60=rt60, absorption=0.161 * 105 / (142 * rt60))
    brir = room_brir(np.random.default_rng(3), hrirs, room, np.array([4.5, 2.5, 1.5]))
    assert _schroeder_rt60(brir.ir, int(brir.tail_start_s * SR)) == pytest.approx(rt60, rel=0.1)
    direct, rest = brir.direct, brir.ir - brir.direct
    assert brir.drr_db == pytest.approx(10 * np.log10(np.sum(direct ** 2) / np.sum(rest ** 2)))


def test_more_reverberation_lowers_the_drr(hrirs):
    drr = []
    for rt60 in (0.2, 1.5):
        room = Room(dims=np.array([7.0, 5.0, 3.0]), head=np.array([3.0, 2.5, 1.5]), yaw=30.0,
                    rt60=rt60, absorption=0.161 * 105 / (142 * rt60))
        drr.append(room_brir(np.random.default_rng(0), hrirs, room,
                             np.array([5.0, 2.5, 1.5])).drr_db)
    assert drr[0] > drr[1] + 3


def test_sources_are_1_to_2_5_m_away_inside_the_walls():
    from binser.scenes.acoustics import draw_room, place_source

    rng = np.random.default_rng(0)
    for _ in range(300):
        rt60, azimuths = rng.uniform(0.2, 0.9), rng.uniform(-180, 180, size=2)
        room = draw_room(rng, rt60, azimuths)
        assert 0 < room.absorption <= 0.9
        assert 0.161 * room.volume / (room.surface * room.absorption) == pytest.approx(rt60)
        for azimuth in azimuths:
            position = place_source(rng, room, azimuth)
            offset = position - room.head
            assert 1.0 <= np.linalg.norm(offset) <= 2.5 and offset[2] == 0
            inside = (position[:2] >= 0.5 - 1e-9) & (position[:2] <= room.dims[:2] - 0.5 + 1e-9)
            assert inside.all()
            bearing = np.degrees(np.arctan2(offset[1], offset[0])) - room.yaw
            assert (bearing - azimuth + 180) % 360 - 180 == pytest.approx(0, abs=1e-6)


def test_interferer_azimuth_keeps_its_distance():
    rng = np.random.default_rng(0)
    for target in (-90.0, 0.0, 85.0):
        for _ in range(50):
            az = draw_interferer_azimuth(rng, target, (-90.0, 90.0))
            assert -90 <= az <= 90 and abs(az - target) >= 20 - 1e-9
    az = draw_interferer_azimuth(rng, 10.0, (5.0, 15.0))        # range too narrow: circle
    assert abs((az - 10.0 + 180) % 360 - 180) >= 20 - 1e-9


# ------------------------------------------------------------------ runs


def test_same_seed_same_bits_other_seed_differs(small, kemar, tmp_path):
    make_scenes(small, tmp_path / "a", _settings(kemar, seed=4), progress=False)
    make_scenes(small, tmp_path / "b", _settings(kemar, seed=4), progress=False)
    make_scenes(small, tmp_path / "c", _settings(kemar, seed=5), progress=False)
    a, b, c = (_files(tmp_path / x) for x in "abc")
    flacs = [k for k in a if k.endswith(".flac")]
    assert len(flacs) == len(small)
    assert {k: a[k] for k in flacs} == {k: b[k] for k in flacs} and a[MANIFEST] == b[MANIFEST]
    assert all(a[k] != c[k] for k in flacs)


def test_a_file_does_not_depend_on_the_other_files(small, kemar, tmp_path):
    settings = _settings(kemar, seed=2, interferer_prob=0.0)
    make_scenes(small, tmp_path / "all", settings, progress=False)
    make_scenes(small.subset([3, 2, 0]), tmp_path / "two", settings, progress=False)
    two = _files(tmp_path / "two")
    every = _files(tmp_path / "all")
    flacs = [k for k in two if k.endswith(".flac")]
    assert len(flacs) == 3 and all(two[k] == every[k] for k in flacs)


def test_manifest_reads_back_as_a_corpus_with_speaker_independent_folds(small, kemar, tmp_path):
    out = tmp_path / "scenes"
    make_scenes(small, out, _settings(kemar, interferer_prob=1.0), progress=False)
    scenes = corpus("scenes", out)
    assert len(scenes) == len(small) and scenes.speakers == small.speakers
    source = {u.path.relative_to(small.root).with_suffix("").as_posix(): u for u in small}
    for u in scenes:
        original = source[u.path.relative_to(out).with_suffix("").as_posix()]
        assert (u.label, u.speaker) == (original.label, original.speaker)
    fold_list = folds(scenes, "loso")
    assert len(fold_list) == len(small.speakers)
    assert speaker_independence(fold_list, [u.speaker for u in scenes])["independent"]
    for train, test in fold_list:
        assert not {scenes[i].speaker for i in train} & {scenes[i].speaker for i in test}
    info = json.loads((out / SETTINGS_FILE).read_text())
    assert info["settings"]["snr"] == [0, 5, 10, 20] and info["corpus"] == "csv"


def test_interferer_is_never_the_targets_speaker(kemar, tmp_path):
    src = corpus("csv", make_corpus(tmp_path / "src", speakers=("a", "b"), per_speaker=4,
                                    seconds=0.4))
    out = tmp_path / "scenes"
    make_scenes(src, out, _settings(kemar, interferer_prob=1.0), progress=False)
    speaker_of = {u.path.relative_to(src.root).as_posix(): u.speaker for u in src}
    rows = _rows(out)
    assert len(rows) == 8 and all(r["interferer"] for r in rows)
    for r in rows:
        assert r["interferer_speaker"] != r["speaker"]
        assert speaker_of[r["interferer"]] == r["interferer_speaker"]


def test_resume_after_interruption_gives_identical_output(small, kemar, tmp_path, monkeypatch):
    settings = _settings(kemar, seed=1)
    make_scenes(small, tmp_path / "whole", settings, progress=False)
    whole = _files(tmp_path / "whole")

    import binser.scenes.run as run

    out, real_write, written = tmp_path / "resumed", run.write_flac, []

    def interrupted(path, audio):
        if len(written) == 3:
            raise KeyboardInterrupt
        real_write(path, audio)
        written.append(path)

    monkeypatch.setattr(run, "write_flac", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_scenes(small, out, settings, progress=False)
    monkeypatch.setattr(run, "write_flac", real_write)
    assert len(_rows(out)) == 3                                 # manifest kept what was done
    written[0].unlink()                                         # a file removed
    (out / "s2").mkdir(exist_ok=True)
    (out / "s2" / ".s2_1.flac.x1y2.part").write_bytes(b"fLaC partial")   # a partial temp
    done = make_scenes(small, out, settings, progress=False)
    assert done["made"] == len(small) - 2 and done["kept"] == 2
    assert _files(out) == whole


# ------------------------------------------------------------------ bad input


def _one_line(error: BaseException) -> str:
    text = str(error)
    assert text and "\n" not in text
    return text


@pytest.mark.parametrize("kw, words", [
    ({"snr": "0,five"}, "--snr"),
    ({"sir": ""}, "--sir"),
    ({"rt60": "0.9:0.2"}, "runs backwards"),
    ({"azimuth": "-90"}, "LOW:HIGH"),
    ({"rt60": "0.01:0.5"}, "RT60 must lie"),
    ({"interferer_prob": "1.5"}, "--interferer-prob"),
])
def test_bad_settings_one_line(kw, words):
    with pytest.raises(ConfigError) as info:
        SceneSettings(**kw)
    assert words in _one_line(info.value)


def _bad_npz(path: Path, **arrays) -> Path:
    good = {"ir": np.ones((4, 2, 64), np.float32), "sources": np.zeros((4, 3), np.float32),
            "samplerate": np.float32(44100)}
    np.savez(path, **{**good, **arrays})
    return path


@pytest.mark.parametrize("arrays, words", [
    ({"ir": np.ones((4, 3, 64), np.float32)}, "ir has shape"),
    ({"ir": np.ones((4, 64), np.float32)}, "ir has shape"),
    ({"sources": np.zeros((5, 3))}, "sources has shape"),
    ({"samplerate": np.float32(8000)}, "sample rate"),
    ({"samplerate": np.array([44100, 48000])}, "sample rate"),
])
def test_bad_hrir_file_one_line_before_any_work(small, tmp_path, arrays, words):
    hrir = _bad_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ConfigError) as info:
        make_scenes(small, tmp_path / "out", SceneSettings(hrir=str(hrir)), progress=False)
    assert words in _one_line(info.value) and str(hrir) in str(info.value)
    assert not (tmp_path / "out").exists()


def test_missing_or_unreadable_hrir_file(small, tmp_path):
    for path, words in ((tmp_path / "none.npz", "not found"),
                        (tmp_path / "junk.npz", "cannot read")):
        if path.name == "junk.npz":
            path.write_bytes(b"not a zip")
        with pytest.raises(ConfigError) as info:
            make_scenes(small, tmp_path / "out", SceneSettings(hrir=str(path)), progress=False)
        assert words in _one_line(info.value)
    np.savez(tmp_path / "keys.npz", ir=np.ones((2, 2, 64)))
    with pytest.raises(ConfigError, match="lacks array"):
        load_hrir(tmp_path / "keys.npz")


def test_corpus_without_speakers(kemar, tmp_path):
    per_file = corpus("csv", make_corpus(tmp_path / "a", speakers=("x", "y", "z"),
                                         per_speaker=1))
    with pytest.raises(CorpusError) as info:
        make_scenes(per_file, tmp_path / "out", _settings(kemar), progress=False)
    assert "no speaker ids" in _one_line(info.value)
    alone = corpus("csv", make_corpus(tmp_path / "b", speakers=("x",), per_speaker=3))
    with pytest.raises(CorpusError, match="another speaker"):
        make_scenes(alone, tmp_path / "out", _settings(kemar), progress=False)
    assert not (tmp_path / "out").exists()
    make_scenes(alone, tmp_path / "out", _settings(kemar, interferer_prob=0), progress=False)
    assert len(_rows(tmp_path / "out")) == 3


def test_output_folder_of_another_run_is_refused(small, kemar, tmp_path):
    out = tmp_path / "scenes"
    make_scenes(small, out, _settings(kemar, seed=0), progress=False)
    before = _files(out)
    with pytest.raises(ConfigError) as info:
        make_scenes(small, out, _settings(kemar, seed=1), progress=False)
    assert "settings.seed" in _one_line(info.value)
    with pytest.raises(ConfigError, match="corpus_digest"):
        make_scenes(small.subset([0, 1, 2]), out, _settings(kemar), progress=False)
    assert _files(out) == before
    again = make_scenes(small, out, _settings(kemar, seed=0), progress=False)   # = resume
    assert again["made"] == 0 and again["kept"] == len(small)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="no scenes.json"):
        make_scenes(small, tmp_path / "other", _settings(kemar), progress=False)
    with pytest.raises(ConfigError, match="inside the source corpus"):
        make_scenes(small, small.root / "scenes", _settings(kemar), progress=False)


def test_scenes_corpus_needs_its_manifest(tmp_path):
    with pytest.raises(CorpusError, match="no scenes.csv"):
        corpus("scenes", tmp_path)


# ------------------------------------------------------------------ command line


def test_cli_makes_and_reads_back_scenes(kemar, tmp_path, capsys):
    root = make_corpus(tmp_path / "src")
    out = tmp_path / "scenes"
    argv = ["scenes", "--dataset", "csv", "--root", str(root), "--out", str(out),
            "--seed", "3", "--snr", "5,15", "--sir", "0", "--rt60", "0.3:0.6",
            "--azimuth", "-45:45", "--hrir", str(kemar), "--quiet"]
    assert main(argv) == 0
    assert "6 files" in capsys.readouterr().out
    rows = _rows(out)
    assert {float(r["snr_db"]) for r in rows} <= {5.0, 15.0}
    assert all(-45 <= float(r["azimuth_deg"]) <= 45 for r in rows)
    assert all(0.3 <= float(r["rt60_s"]) <= 0.6 for r in rows)
    assert len(corpus("scenes", out)) == 6
    assert main([*argv[:-1], "--snr", "5,x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("binser: error: --snr") and "\n" not in err
    assert main(["scenes", "--dataset", "csv", "--root", str(root), "--out", str(out),
                 "--seed", "4", "--hrir", str(kemar), "--quiet"]) == 2
    assert "other settings" in capsys.readouterr().err



def test_bench_scenes_part_reports_the_real_time_factor(kemar, tmp_path, monkeypatch):
    from binser.benchmark import BenchOptions, run_bench

    monkeypatch.setenv("BINSER_HRTF", str(kemar))
    root = tmp_path / "emovo"
    for i, name in enumerate(("f1/rab-f1-b1", "f1/tri-f1-b2", "m1/gio-m1-b1", "m1/neu-m1-b2")):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        x = _speech_like(0.6, seed=i)
        sf.write(root / f"{name}.flac", np.stack([x, x], axis=1), SR)
    lines: list[str] = []
    figures = run_bench(BenchOptions(root=root, quick=True, parts=("scenes",)), report=lines.append)
    sc = figures["scenes"]
    assert sc["files"] == 4 and sc["audio_s"] == pytest.approx(2.4)
    assert sc["xrt"] == pytest.approx(sc["audio_s"] / sc["wall_s"])
    assert figures["summary"]["scenes_xrt"] == sc["xrt"]
    assert any(line.startswith("scenes: 4 EMOVO files") and "x real time" in line
               for line in lines)
