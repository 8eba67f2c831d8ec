"""Interaural cues and the views built on them: ``steered``, ``better-ear`` and ``spatial``
(docs/METHOD.md section 2b).

``L``, ``R``: the left and right channels, ``(N,)`` float32 at ``sr`` Hz (16 kHz in binser).
Lags and delays follow :func:`binser.views.channel_stats`: **positive = the right channel
lags (arrives after) the left one**; a right channel ``R[n] = L[n - D]`` has delay ``+D``.

GCC-PHAT (:func:`gcc_phat_lags`). For a cross-spectrum ``G(w) = X_R(w) conj(X_L(w))`` (the
DFT of ``c[k] = sum_n R[n + k] L[n]``), the phase transform keeps only its phase,
``G / max(|G|, 1e-20)``, whose inverse real FFT is the generalised cross-correlation; the lag
is the ``k`` with ``|k| <= max_lag`` maximising it (ties: the smallest ``|k|``, then the
negative one; an all-zero cross-spectrum gives 0). Integer samples (62.5 us at 16 kHz).

Blocks (:data:`BLOCK_S` = 0.5 s, ``B = round(0.5 sr)`` samples; block ``b`` covers samples
``[bB, (b+1)B)``, the last one possibly shorter) and their crossfade: per block a weight
``w_b(n)`` that is 1 inside the block and 0 beyond, except for a raised-cosine ramp over the
``2h`` samples straddling each inner block edge ``e`` (:data:`CROSSFADE_MS` = 10 ms, ``h =
round(0.005 sr)``): ``w_b(e - h + t) = 1 - r(t)``, ``w_{b+1}(e - h + t) = r(t)``, ``r(t) =
(1 - cos(pi (t + 1/2) / (2h))) / 2``, ``t = 0 .. 2h-1``, so ``sum_b w_b(n) = 1`` at every sample.

* **steered** (:func:`steered`): per block the GCC-PHAT lag ``d_b`` of that block of ``L`` and
  ``R`` (``|d_b| <= 1 ms`` = 16 samples at 16 kHz, :data:`MAX_ITD_MS`), the right channel
  advanced by it, ``R~[n] = sum_b w_b(n) R[n + d_b]`` (``R`` is 0 outside ``[0, N)``), and
  ``steered = s (L + R~)``: a two-microphone delay-and-sum towards the dominant source,
  with the side scale ``s`` of ``mid = s (L + R)``, so where every ``d_b = 0`` it equals
  ``mid`` exactly.
* **better-ear** (:func:`better_ear`): per ear ``e`` the energies ``E_e[j]`` (mean square,
  full scale 1.0) of consecutive 10 ms frames (160 samples at 16 kHz; the last one may be
  shorter); per block ``b`` (the frames starting in it, 50 for a whole block) the ear's
  noise floor ``F_e(b)`` = the 10th percentile of those ``E_e`` (numpy's linear
  interpolation: the pauses between syllables) and ``SNR_e(b) = 10 log10(max(mean_{j in b}
  E_e[j], 1e-12) / max(F_e(b), 1e-12))`` dB; the block takes the ear with the higher
  estimate (ties: left), ``better-ear[n] = sum_b w_b(n) X_{e_b}[n]``.
* **spatial** (:func:`spatial_frames`): not a signal but frames ``(T, 4 F_s + 1)`` of
  interaural cues (section below), pooled like the backbone's frames and classified by
  their own SVM; no backbone.

Spatial cues. STFT of ``L`` and ``R``: a periodic Hann window of 25 ms (400 samples) centred
in a 512-point FFT, hop 10 ms (160 samples), frames centred on ``t * hop`` with zero padding
(``T = 1 + N // 160``). Per bin ``P_LL = |X_L|^2``, ``P_RR = |X_R|^2``, ``P_LR = X_L
conj(X_R)``, each summed over the :data:`SMOOTH_FRAMES` = 5 frames centred on ``t`` (frames
beyond the ends count as 0) and over the bins of band ``f`` with the weights of the Slaney
Mel filterbank (:data:`SPATIAL_BANDS` = 32 bands, 20 Hz to ``sr/2``): ``Phi_LL``, ``Phi_RR``,
``Phi_LR``. Per frame and band:

* ``ILD = 10 log10((Phi_LL + 1e-10) / (Phi_RR + 1e-10))`` dB (positive: left louder);
* ``cos IPD, sin IPD = Re, Im of Phi_LR / max(|Phi_LR|, 1e-10)`` (IPD positive when the
  right channel lags; (0, 0) where there is no signal);
* ``IC = |Phi_LR| / max(sqrt(Phi_LL Phi_RR), 1e-10)`` in [0, 1] (interaural coherence);

and one ``ITD`` per frame, in ms: the GCC-PHAT lag of the smoothed full-band cross-spectrum
of the frame (within +-1 ms). Columns: ``[ILD_1..F_s, cos_1..F_s, sin_1..F_s, IC_1..F_s,
ITD]``, float32.
"""
from __future__ import annotations

import numpy as np
import scipy.fft

from .errors import ConfigError

BLOCK_S = 0.5            # s, blocks of steered and better-ear
MAX_ITD_MS = 1.0         # ms, largest interaural delay searched (a head: about 0.7 ms)
CROSSFADE_MS = 10.0      # ms, raised-cosine crossfade straddling each block edge
FRAME_MS = 10.0          # ms, energy frames of the better-ear SNR estimate
NOISE_PERCENTILE = 10.0  # percentile of frame energies taken as an ear's noise floor
SPATIAL_WIN_MS = 25.0    # ms, STFT window of the spatial cues
SPATIAL_HOP_MS = 10.0    # ms, STFT hop
SPATIAL_NFFT = 512
SPATIAL_BANDS = 32       # Slaney Mel bands, 20 Hz .. sr/2
SPATIAL_FMIN = 20.0
SMOOTH_FRAMES = 5        # frames summed (centred) before the cues are formed
SPATIAL_DIM = 4 * SPATIAL_BANDS + 1
_POWER_EPS = 1e-10
_PHAT_EPS = 1e-20
_CHUNK_FRAMES = 2048     # STFT frames held at once


def samples(ms: float, sr: int) -> int:
    """``ms`` milliseconds in whole samples at ``sr`` Hz."""
    return int(round(ms * sr / 1000.0))


def _lag_order(max_lag: int) -> np.ndarray:
    """Lags 0, -1, 1, -2, 2, ... (the tie order of :func:`gcc_phat_lags`)."""
    return np.array([0] + [s * k for k in range(1, max_lag + 1) for s in (-1, 1)])


def gcc_phat_lags(cross: np.ndarray, n_fft: int, max_lag: int) -> np.ndarray:
    """GCC-PHAT lags of cross-spectra ``cross`` ``(..., n_fft//2 + 1)`` complex, each
    ``X_R conj(X_L)``: ``(...)`` int lags in samples (positive: right lags); see the module
    docstring."""
    if max_lag < 0 or 2 * max_lag >= n_fft:
        raise ConfigError(f"max_lag must lie in 0..{(n_fft - 1) // 2}, got {max_lag}")
    magnitude = np.abs(cross)
    phat = cross / np.maximum(magnitude, _PHAT_EPS)
    corr = scipy.fft.irfft(phat, n=n_fft, axis=-1)
    order = _lag_order(max_lag)
    best = np.argmax(corr[..., order % n_fft], axis=-1)   # first maximum in tie order
    return order[best]


def block_lags(left: np.ndarray, right: np.ndarray, sr: int, block_s: float = BLOCK_S,
               max_itd_ms: float = MAX_ITD_MS) -> np.ndarray:
    """Per block of ``block_s`` seconds, the GCC-PHAT lag (samples) of that block of
    ``left`` and ``right`` within ``+-max_itd_ms`` -> ``(n_blocks,)`` int."""
    block, max_lag = samples(1000.0 * block_s, sr), samples(max_itd_ms, sr)
    n_fft = int(2 ** np.ceil(np.log2(block + max_lag + 1)))
    lags = []
    for start in range(0, max(left.size, 1), block):
        a = scipy.fft.rfft(left[start:start + block].astype(np.float64), n_fft)
        b = scipy.fft.rfft(right[start:start + block].astype(np.float64), n_fft)
        lags.append(int(gcc_phat_lags(b * np.conj(a), n_fft, max_lag)))
    return np.asarray(lags, dtype=np.int64)


def _ramp(h: int) -> np.ndarray:
    """``r(t)``, ``t = 0..2h-1``: the rising half of the crossfade (module docstring)."""
    t = np.arange(2 * h, dtype=np.float64)
    return 0.5 * (1.0 - np.cos(np.pi * (t + 0.5) / (2 * h)))


def block_weights(n: int, sr: int, block_s: float = BLOCK_S,
                  crossfade_ms: float = CROSSFADE_MS):
    """Yield ``(b, start, weights)`` per block: its crossfade weights ``w_b`` over samples
    ``[start, start + len(weights))`` (zero elsewhere); they sum to 1 at every sample."""
    block, h = samples(1000.0 * block_s, sr), samples(crossfade_ms / 2.0, sr)
    if h > 0 and 2 * h > block:
        raise ConfigError(f"crossfade of {crossfade_ms} ms is longer than a block")
    ramp = _ramp(h)
    n_blocks = max(1, -(-n // block))
    for b in range(n_blocks):
        lo, hi = b * block, min((b + 1) * block, n)
        start, stop = (lo - h if b > 0 else lo), (hi + h if b < n_blocks - 1 else hi)
        stop = min(stop, n)
        w = np.ones(stop - start)
        if b > 0 and h:
            w[:2 * h] = ramp[:min(2 * h, stop - start)] if stop - start < 2 * h else ramp
        if b < n_blocks - 1 and h:
            down = 1.0 - ramp
            m = stop - (hi - h)            # samples of the falling ramp inside [0, n)
            w[-m:] = down[:m] if m < 2 * h else down
        yield b, start, w


def _shifted(x: np.ndarray, d: int, start: int, stop: int) -> np.ndarray:
    """``x[n + d]`` for ``n`` in ``[start, stop)``, 0 where ``n + d`` is outside x."""
    out = np.zeros(stop - start, dtype=np.float64)
    lo, hi = max(start + d, 0), min(stop + d, x.size)
    if hi > lo:
        out[lo - start - d:hi - start - d] = x[lo:hi]
    return out


def _check_pair(left: np.ndarray, right: np.ndarray, sr: int) -> None:
    if left.shape != right.shape or left.ndim != 1:
        raise ConfigError(f"left and right must be (N,) arrays of one length, got "
                          f"{left.shape} and {right.shape}")
    if int(sr) != sr or sr <= 0:
        raise ConfigError(f"sample rate must be a positive integer (Hz), got {sr!r}")


def aligned_right(left: np.ndarray, right: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """``(R~ (N,) float64, block lags)``: the right channel advanced by each block's
    GCC-PHAT lag, crossfaded at block edges (module docstring)."""
    _check_pair(left, right, sr)
    lags = block_lags(left, right, sr)
    out = np.zeros(left.size, dtype=np.float64)
    for b, start, w in block_weights(left.size, sr):
        out[start:start + w.size] += w * _shifted(right, int(lags[b]), start, start + w.size)
    return out, lags


def steered(left: np.ndarray, right: np.ndarray, scale: np.float32, sr: int) -> np.ndarray:
    """The ``steered`` view ``s (L + R~)`` -> ``(N,)`` float32 (module docstring)."""
    aligned, _ = aligned_right(left, right, sr)
    return np.float32(scale) * (left + aligned.astype(np.float32))


def frame_energies(x: np.ndarray, sr: int, frame_ms: float = FRAME_MS) -> np.ndarray:
    """Mean square of consecutive ``frame_ms`` frames of ``x`` (the last may be shorter)
    -> ``(ceil(N / frame),)`` float64."""
    frame = samples(frame_ms, sr)
    x = x.astype(np.float64)
    starts = np.arange(0, x.size, frame)
    sums = np.add.reduceat(np.square(x), starts) if x.size else np.zeros(0)
    return sums / np.diff(np.append(starts, x.size))


def block_snr_db(x: np.ndarray, sr: int, block_s: float = BLOCK_S) -> np.ndarray:
    """The better-ear estimate ``SNR_e(b)`` of one ear ``x`` per block, dB (module
    docstring) -> ``(n_blocks,)``."""
    energies = frame_energies(x, sr)
    if energies.size == 0:
        return np.zeros(1)
    per_block = max(1, samples(1000.0 * block_s, sr) // samples(FRAME_MS, sr))
    out = []
    for start in range(0, energies.size, per_block):
        block = energies[start:start + per_block]
        floor = max(float(np.percentile(block, NOISE_PERCENTILE)), 1e-12)
        out.append(10.0 * np.log10(max(float(block.mean()), 1e-12) / floor))
    return np.asarray(out)


def better_ear_choice(left: np.ndarray, right: np.ndarray, sr: int) -> np.ndarray:
    """Per block, 0 (left) or 1 (right): the ear with the higher SNR estimate (ties: left)."""
    _check_pair(left, right, sr)
    if samples(1000.0 * BLOCK_S, sr) % samples(FRAME_MS, sr):
        raise ConfigError(f"{sr} Hz: a {BLOCK_S} s block is not a whole number of frames")
    return (block_snr_db(right, sr) > block_snr_db(left, sr)).astype(np.int64)


def better_ear(left: np.ndarray, right: np.ndarray, sr: int) -> np.ndarray:
    """The ``better-ear`` view -> ``(N,)`` float32 (module docstring)."""
    choice = better_ear_choice(left, right, sr)
    ears = (left.astype(np.float64), right.astype(np.float64))
    out = np.zeros(left.size, dtype=np.float64)
    for b, start, w in block_weights(left.size, sr):
        out[start:start + w.size] += w * ears[int(choice[b])][start:start + w.size]
    return out.astype(np.float32)


# ----------------------------------------------------------------------------- spatial cues


def _window(sr: int) -> np.ndarray:
    """The periodic Hann window of 25 ms centred in a 512-point frame."""
    win, n_fft = samples(SPATIAL_WIN_MS, sr), SPATIAL_NFFT
    if win > n_fft:
        raise ConfigError(f"{sr} Hz: a {SPATIAL_WIN_MS} ms window exceeds {n_fft} samples")
    window = np.zeros(n_fft)
    offset = (n_fft - win) // 2
    window[offset:offset + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    return window


def _stft_frames(padded: np.ndarray, n_frames: int, first: int, stop: int, sr: int
                 ) -> np.ndarray:
    """Spectra ``(stop - first, n_fft//2 + 1)`` complex128 of frames ``first..stop-1`` of a
    signal zero padded by ``n_fft // 2`` in front and ``n_fft`` behind (centred frames);
    frames outside ``0..n_frames-1`` are 0."""
    hop, n_fft = samples(SPATIAL_HOP_MS, sr), SPATIAL_NFFT
    frames = np.zeros((stop - first, n_fft))
    valid = np.arange(max(first, 0), min(stop, n_frames))
    frames[valid - first] = padded[valid[:, None] * hop + np.arange(n_fft)[None, :]]
    return scipy.fft.rfft(frames * _window(sr), axis=-1)


def _smooth(values: np.ndarray, n: int) -> np.ndarray:
    """Sums over ``SMOOTH_FRAMES`` consecutive rows: row ``i`` of the result sums rows
    ``i .. i + SMOOTH_FRAMES - 1`` of ``values`` (``n`` rows out)."""
    c = np.cumsum(np.concatenate([np.zeros((1,) + values.shape[1:], values.dtype), values]),
                  axis=0)
    return c[SMOOTH_FRAMES:SMOOTH_FRAMES + n] - c[:n]


def _band_matrix(sr: int) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=sr, n_fft=SPATIAL_NFFT, n_mels=SPATIAL_BANDS,
                               fmin=SPATIAL_FMIN, fmax=sr / 2.0, htk=False, norm="slaney"
                               ).astype(np.float64)


def spatial_frames(left: np.ndarray, right: np.ndarray, sr: int) -> np.ndarray:
    """Interaural cues per frame and band -> ``(1 + N // hop, 4 * 32 + 1)`` float32
    (columns: ILD dB, cos IPD, sin IPD, IC per band, then ITD ms; module docstring)."""
    _check_pair(left, right, sr)
    n_frames = 1 + left.size // samples(SPATIAL_HOP_MS, sr)
    bands = _band_matrix(sr)
    max_lag = samples(MAX_ITD_MS, sr)
    half = SMOOTH_FRAMES // 2
    out = np.empty((n_frames, SPATIAL_DIM), dtype=np.float32)
    pad = (SPATIAL_NFFT // 2, SPATIAL_NFFT)
    padded_l = np.pad(left.astype(np.float64), pad)
    padded_r = np.pad(right.astype(np.float64), pad)
    for t0 in range(0, n_frames, _CHUNK_FRAMES):
        t1 = min(t0 + _CHUNK_FRAMES, n_frames)
        xl = _stft_frames(padded_l, n_frames, t0 - half, t1 + half, sr)
        xr = _stft_frames(padded_r, n_frames, t0 - half, t1 + half, sr)
        cross = _smooth(xl * np.conj(xr), t1 - t0)                  # (n, bins) L conj R
        p_ll = _smooth(np.abs(xl) ** 2, t1 - t0) @ bands.T
        p_rr = _smooth(np.abs(xr) ** 2, t1 - t0) @ bands.T
        p_lr = cross @ bands.T
        magnitude = np.abs(p_lr)
        unit = p_lr / np.maximum(magnitude, _POWER_EPS)
        out[t0:t1] = np.concatenate([
            10.0 * np.log10((p_ll + _POWER_EPS) / (p_rr + _POWER_EPS)),
            unit.real, unit.imag,
            magnitude / np.maximum(np.sqrt(p_ll * p_rr), _POWER_EPS),
            (1000.0 / sr * gcc_phat_lags(np.conj(cross), SPATIAL_NFFT, max_lag))[:, None],
        ], axis=1)
    return out
