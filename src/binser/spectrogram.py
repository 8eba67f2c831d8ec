"""Log-Mel spectrograms, context segments and 3-channel images (docs/METHOD.md sections 3-4).

Shapes: ``N`` samples, ``V`` views, ``F`` Mel bands, ``T`` frames, ``n`` segments, ``L``
frames per segment. Every array returned is float32 unless stated.

The log-Mel is librosa's (with the config's values; these are the defaults)::

    power_to_db(melspectrogram(y, sr, n_fft=512, hop_length=160, win_length=400,
                               window="hamming", center=True, pad_mode="constant",
                               power=2, n_mels=64, fmin=20, fmax=8000),
                ref=1, amin=1e-10, top_db=None)

computed faster: a float32 real FFT over a strided frame view, in cache-sized chunks, and a
sparse Mel product, for all views of an utterance in one call. Float32 rounding moves the
dB values by ~3e-5 dB on noisy audio, and by up to ~2e-3 dB in bands 40-90 dB below a
frame's loudest band (pure synthetic tones); the floor is exact.

Images: the deltas of overlapping segments are computed once per utterance for the segment
interiors, and per segment only at the half-width edges (where ``mode="interp"`` fits a
polynomial); the result equals ``segment_images(segment(log_mel(.)))``.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Mapping

import numpy as np
import scipy.fft
import scipy.signal

from .config import FrontEndConfig
from .errors import BinserError, ConfigError
from .validation import check_int_range

__all__ = [
    "log_mel", "log_mel_batch", "deltas", "segment", "n_segments", "segment_images",
    "resize_images", "utterance_images", "views_images",
]

_DEFAULT = FrontEndConfig()
_MAX_AMPLITUDE = 1e15  # |sample| above this overflows the float32 power spectrum (not audio)
_MAX_SEGMENT_VALUE = 1e30  # |log-Mel value| above this overflows float32 deltas


# --------------------------------------------------------------------------- log-Mel


@lru_cache(maxsize=16)
def _analysis_window(window: str, win_length: int) -> np.ndarray:
    """Periodic analysis window (win_length,) float32, as librosa/scipy ``fftbins=True``."""
    w = scipy.signal.get_window(window, win_length, fftbins=True).astype(np.float32)
    w.flags.writeable = False
    return w


@lru_cache(maxsize=16)
def _mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float):
    """Slaney Mel filterbank (n_mels, n_fft//2 + 1) from ``librosa.filters.mel``, float32,
    as a scipy CSR matrix: each FFT bin feeds at most two triangles, so the sparse product
    costs ~30x less than a dense one."""
    import librosa  # heavy import, only needed once per parameter set
    import scipy.sparse

    basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
                                htk=False, norm="slaney")
    return scipy.sparse.csr_matrix(basis.astype(np.float32))


def _check_signals(signals: np.ndarray, sr: int, config: FrontEndConfig) -> np.ndarray:
    """Validate the sample rate and values; return the signals as float32 (V, N)."""
    if int(sr) != config.sample_rate:
        raise ConfigError(f"log-Mel needs {config.sample_rate} Hz audio (resample first), "
                          f"got sr={sr}")
    x = np.asarray(signals, dtype=np.float32)
    if x.ndim != 2:
        raise BinserError(f"expected signal(s) of shape (N,) or (V, N), got {x.shape}")
    if not np.isfinite(x).all():
        raise BinserError("signal holds NaN or infinite samples")
    if x.size and np.abs(x).max() > _MAX_AMPLITUDE:
        raise BinserError(f"signal amplitude {np.abs(x).max():.3g} exceeds {_MAX_AMPLITUDE:g} "
                          "(full scale is 1.0): its float32 power spectrum would overflow")
    return x


def _padded(x: np.ndarray, config: FrontEndConfig) -> tuple[np.ndarray, int]:
    """Signals (V, N) padded for framing, and the frame count T.

    With ``center`` the signal is zero-padded by n_fft//2 on both sides (T = 1 + N//hop);
    without it, a signal shorter than n_fft is zero-padded at the end to one frame.
    """
    n_fft, hop = config.n_fft, config.hop_length
    if config.center:
        padded = np.pad(x, ((0, 0), (n_fft // 2, n_fft // 2)))
    else:
        padded = np.pad(x, ((0, 0), (0, max(0, n_fft - x.shape[1]))))
    return padded, 1 + (padded.shape[1] - n_fft) // hop


def _frame_view(padded: np.ndarray, n_frames: int, config: FrontEndConfig) -> np.ndarray:
    """Strided view (V, T, win_length) of the window's non-zero span in every frame.

    Frame t covers padded samples [t*hop, t*hop + n_fft) with the window of win_length
    samples centred in it (librosa's ``pad_center``), i.e. starting ``(n_fft - win)//2`` in.
    """
    hop, win = config.hop_length, config.win_length
    offset = (config.n_fft - win) // 2
    view = np.lib.stride_tricks.sliding_window_view(padded[:, offset:], win, axis=1)
    return view[:, : (n_frames - 1) * hop + 1 : hop]


def _mel_power(frames: np.ndarray, window: np.ndarray, basis,
               buffer: np.ndarray) -> np.ndarray:
    """Mel power (F, B, m) of frames (B, m, win), through a zeroed buffer of at least
    B*m rows of n_fft samples. The window sits at the start of each buffer row instead of
    its centre: a circular shift changes only the phase, not the power spectrum."""
    n_blocks, m, win = frames.shape
    rows = buffer[: n_blocks * m]
    np.multiply(frames, window, out=rows.reshape(n_blocks, m, -1)[..., :win])
    spectrum = scipy.fft.rfft(rows, axis=-1)  # (B*m, K) complex64
    power = np.square(spectrum.real)
    power += np.square(spectrum.imag)
    mel = basis @ np.ascontiguousarray(power.T)  # sparse (F, K) @ (K, B*m)
    return mel.reshape(mel.shape[0], n_blocks, m)


def _to_db(mel_power: np.ndarray, floor: float) -> np.ndarray:
    """In place ``10*log10(max(power, floor))`` (np.log is much faster than np.log10)."""
    floor = np.float32(floor)
    np.copyto(mel_power, floor, where=mel_power < floor)  # faster than np.maximum
    np.log(mel_power, out=mel_power)
    mel_power *= np.float32(10.0 / np.log(10.0))
    return mel_power


_CHUNK_FRAMES = 512  # frames transformed at a time: stays in cache (measured best)


def _chunks(n_views: int, n_frames: int) -> list[tuple[slice, slice]]:
    """(views, frames) blocks of at most ~_CHUNK_FRAMES frames: several whole views at a
    time when they are short, else parts of one view."""
    if n_frames <= _CHUNK_FRAMES:
        per = max(1, _CHUNK_FRAMES // n_frames)
        return [(slice(v, min(n_views, v + per)), slice(0, n_frames))
                for v in range(0, n_views, per)]
    return [(slice(v, v + 1), slice(t, min(n_frames, t + _CHUNK_FRAMES)))
            for v in range(n_views) for t in range(0, n_frames, _CHUNK_FRAMES)]


def log_mel_batch(signals: np.ndarray, sr: int,
                  config: FrontEndConfig = _DEFAULT) -> np.ndarray:
    """Log-Mel spectrograms in dB of several equally long signals in one pass.

    signals: (V, N) samples at ``sr`` Hz (must equal ``config.sample_rate``; resample
    first). Returns (V, n_mels, T) float32 dB, ``10*log10(max(power, power_floor))``:
    never -inf (an all-zero view gives the constant floor, -100 dB by default).
    Raises ConfigError on a sample-rate mismatch.
    """
    x = _check_signals(signals, sr, config)
    padded, n_frames = _padded(x, config)
    frames = _frame_view(padded, n_frames, config)
    window = _analysis_window(config.window, config.win_length)
    basis = _mel_basis(config.sample_rate, config.n_fft, config.n_mels,
                       float(config.fmin), float(config.fmax))
    chunks = _chunks(x.shape[0], n_frames)
    rows = max((v.stop - v.start) * (t.stop - t.start) for v, t in chunks)
    buffer = np.zeros((rows, config.n_fft), dtype=np.float32)
    mel = np.empty((x.shape[0], config.n_mels, n_frames), dtype=np.float32)
    for views, times in chunks:
        block = _mel_power(frames[views, times], window, basis, buffer)  # (F, B, m)
        mel[views, :, times] = block.transpose(1, 0, 2)
    return _to_db(mel, config.power_floor)


def log_mel(signal: np.ndarray, sr: int, config: FrontEndConfig = _DEFAULT) -> np.ndarray:
    """Log-Mel spectrogram (n_mels, T) float32 dB of one signal (N,) at ``sr`` Hz.

    T = 1 + N // hop_length with the default centred framing. See ``log_mel_batch``.
    """
    signal = np.asarray(signal)
    if signal.ndim != 1:
        raise BinserError(f"expected a 1-D signal (N,), got shape {signal.shape}")
    return log_mel_batch(signal[None, :], sr, config)[0]


# --------------------------------------------------------------------------- deltas


@lru_cache(maxsize=64)
def _delta_operator(length: int, width: int, order: int) -> np.ndarray:
    """Matrix D (length, length) float64 with ``delta(x) = D @ x`` along the time axis.

    Column j is scipy's Savitzky-Golay derivative filter (deriv = polyorder = order,
    mode='interp', librosa's choice) applied to the unit impulse e_j; the filter is linear,
    so D applies it exactly (up to rounding) to any input of that length.
    """
    impulses = np.eye(length)
    op = scipy.signal.savgol_filter(impulses, width, polyorder=order, deriv=order,
                                    axis=0, mode="interp")
    op.flags.writeable = False
    return op


def _check_delta_args(length: int, width: int, order: int) -> None:
    """Refuse parameters librosa.feature.delta would refuse (ConfigError)."""
    check_int_range(order, "delta order", 1, integral_floats=True)
    if int(width) != width or width < 3 or width % 2 == 0:
        raise ConfigError(f"delta width must be an odd integer >= 3, got {width}")
    if width <= order:
        raise ConfigError(f"delta width ({width}) must exceed the order ({order})")
    if width > length:
        raise ConfigError(f"delta width ({width}) exceeds the {length} frames along the axis")


def deltas(x: np.ndarray, width: int = 9, order: int = 1, axis: int = -1) -> np.ndarray:
    """Regression (delta) coefficients of ``x`` along ``axis``, any leading batch axes.

    Equal to ``librosa.feature.delta(x, width=width, order=order, axis=axis, mode="interp")``
    (a Savitzky-Golay derivative of polynomial order ``order`` over ``width`` frames, edges
    by polynomial interpolation). order=2 gives delta-delta. Returns x's shape; float32 for
    float32 input, float64 otherwise. Raises ConfigError when width is even, < 3, not
    above ``order`` or longer than the axis.
    """
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    moved = np.moveaxis(x, axis, -1)
    op = _operator_t(moved.shape[-1], width, order, x.dtype)
    # The operator's rows sum to zero; centring makes a constant input give exactly 0.
    return np.moveaxis((moved - moved[..., :1]) @ op, -1, axis)


def _operator_t(length: int, width: int, order: int, dtype) -> np.ndarray:
    """Transposed delta operator (length, length) of ``dtype``: ``x @ op`` = delta of x."""
    _check_delta_args(length, width, order)
    return _delta_operator(length, int(width), int(order)).T.astype(dtype)


# --------------------------------------------------------------------------- segments


def n_segments(T: int, frames: int = 64, hop: int = 30) -> int:
    """Number of segments ``segment`` cuts from T frames: ``1 + ceil(max(T - frames, 0) /
    hop)``; starts 0, hop, 2*hop ... until the whole log-Mel is covered (the last segment
    may run past T and is then padded, see :func:`segment`)."""
    if frames < 1 or hop < 1:
        raise ConfigError(f"segment frames and hop must be >= 1, got {frames}, {hop}")
    if T < 1:
        raise BinserError(f"cannot segment an empty log-Mel (T={T})")
    return 1 + -(-max(T - frames, 0) // hop)


def padded_length(T: int, frames: int = 64, hop: int = 30) -> int:
    """Frames the segments span: ``(n - 1) * hop + frames`` (>= T)."""
    return (n_segments(T, frames, hop) - 1) * hop + frames


def _windows(logmel: np.ndarray, frames: int, hop: int) -> np.ndarray:
    """Segments (n, F, frames) of a log-Mel (F, T): a strided view of the log-Mel, padded
    at the end with its minimum to :func:`padded_length` first where that exceeds T."""
    if logmel.ndim != 2:
        raise BinserError(f"expected a log-Mel of shape (F, T), got {logmel.shape}")
    n_bands, T = logmel.shape
    n = n_segments(T, frames, hop)
    total = padded_length(T, frames, hop)
    if total > T:
        fill = logmel.min() if logmel.size else 0.0   # F = 0: nothing to fill (fuzzing)
        padded = np.full((n_bands, total), fill, dtype=np.float32)
        padded[:, :T] = logmel
        logmel = padded
    view = np.lib.stride_tricks.sliding_window_view(logmel, frames, axis=1)  # (F, W, frames)
    return view[:, : (n - 1) * hop + 1 : hop].transpose(1, 0, 2)


def segment(logmel: np.ndarray, frames: int = 64, hop: int = 30) -> np.ndarray:
    """Cut a log-Mel (F, T) into context windows (n, F, frames) float32 (a copy).

    Starts 0, hop, 2*hop ... until the segments cover all T frames (docs/METHOD.md section
    4, eq. M7: the whole log-Mel); where the last segment runs past T it is padded at the
    end with the utterance's minimum value, so an utterance shorter than ``frames`` gives
    exactly one padded segment and no frame is ever dropped.
    """
    logmel = np.asarray(logmel, dtype=np.float32)
    return np.ascontiguousarray(_windows(logmel, frames, hop))


# --------------------------------------------------------------------------- images


_FLAT_RTOL = 1e-5  # a channel spanning less than this x the image's peak |static| is flat


def _minmax_per_image_channel(images: np.ndarray) -> np.ndarray:
    """Scale each (image, channel) plane of (n, C, H, W) to [0, 1], in place.

    A constant channel becomes all 0. So does a channel whose span is below ``_FLAT_RTOL``
    times the image's largest |channel 0| value: that is float rounding (e.g. the delta of
    a straight ramp, nominally constant), which scaling would blow up into noise.
    """
    lo = images.min(axis=(2, 3), keepdims=True)
    hi = images.max(axis=(2, 3), keepdims=True)
    span = hi - lo
    peak = np.maximum(np.abs(lo[:, :1]), np.abs(hi[:, :1]))
    flat = span <= np.float32(_FLAT_RTOL) * peak
    images -= lo
    images /= np.where(flat | (span <= 0), np.float32(np.inf), span)  # x / inf = 0
    return images


def _complete_images(images: np.ndarray, width: int) -> np.ndarray:
    """Fill channels 1, 2 of (n, 3, F, L) images with the delta and delta-delta of channel 0
    along L, then min-max scale every (image, channel) plane; in place, returned."""
    static = images[:, 0]
    centred = static - static[..., :1]  # exact 0 deltas for a constant segment
    length = images.shape[-1]
    np.matmul(centred, _operator_t(length, width, 1, np.float32), out=images[:, 1])
    np.matmul(centred, _operator_t(length, width, 2, np.float32), out=images[:, 2])
    return _minmax_per_image_channel(images)


def segment_images(segments: np.ndarray, width: int = 9) -> np.ndarray:
    """3-channel images (n, 3, F, L) float32 in [0, 1] from segments (n, F, L).

    Channels: static log-Mel, delta and delta-delta along time within each segment
    (as ``deltas`` with ``width``), each channel of each image min-max scaled to [0, 1]
    independently. A constant channel becomes all zeros, never NaN; so does one whose span
    is mere float rounding (below 1e-5 x the segment's largest |value|, e.g. the
    delta-delta of a straight ramp).
    """
    segments = np.asarray(segments, dtype=np.float32)
    if segments.ndim != 3:
        raise BinserError(f"expected segments of shape (n, F, L), got {segments.shape}")
    peak = np.abs(segments).max() if segments.size else 0.0
    if not peak <= _MAX_SEGMENT_VALUE:  # NaN fails this test too
        raise BinserError(f"segment values must be finite and within +-{_MAX_SEGMENT_VALUE:g} "
                          f"(log-Mel dB); got a peak of {peak}")
    images = np.empty((segments.shape[0], 3) + segments.shape[1:], dtype=np.float32)
    images[:, 0] = segments
    return _complete_images(images, width)


def resize_images(images, size: int):
    """Bilinear resize of (n, C, H, W) images (numpy or torch) to a torch float32 tensor
    (n, C, size, size) (``interpolate``, align_corners=False, no antialias).

    When size == H == W the images come back unchanged, as a tensor.
    """
    import torch
    import torch.nn.functional as nnf

    check_int_range(size, "image size", 1, integral_floats=True)
    tensor = torch.as_tensor(images)
    if tensor.ndim != 4:
        raise BinserError(f"expected images of shape (n, C, H, W), got {tuple(tensor.shape)}")
    tensor = tensor.to(torch.float32)
    if tensor.shape[2] == size and tensor.shape[3] == size:
        return tensor
    return nnf.interpolate(tensor, size=(int(size), int(size)), mode="bilinear",
                           align_corners=False, antialias=False)


# --------------------------------------------------------------------------- composition


def _sources(logmels: np.ndarray, frames: int, hop: int) -> np.ndarray:
    """Log-Mels (V, F, T) to segment from; where the segments run past T
    (:func:`padded_length`), each padded at the end with its own minimum."""
    V, n_bands, T = logmels.shape
    total = padded_length(T, frames, hop)
    if total == T:
        return logmels
    padded = np.empty((V, n_bands, total), dtype=np.float32)
    padded[...] = logmels.min(axis=(1, 2))[:, None, None]
    padded[:, :, :T] = logmels
    return padded


def _segment_view(sources: np.ndarray, n: int, frames: int, hop: int) -> np.ndarray:
    """Strided view (V, n, F, frames) of n segments of each of the sources (V, F, T)."""
    view = np.lib.stride_tricks.sliding_window_view(sources, frames, axis=2)  # (V, F, W, L)
    return view[:, :, : (n - 1) * hop + 1 : hop].transpose(0, 2, 1, 3)


def _interior_deltas(sources: np.ndarray, odd_taps: np.ndarray,
                     even_taps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Delta and delta-delta filters run over the whole of each source (V, F, T).

    With ``d_j = x[t+j] - x[t-j]`` and ``s_j = x[t+j] + x[t-j] - 2 x[t]`` (j = 1..half):
    delta = sum_j odd_taps[j-1] d_j, delta-delta = sum_j even_taps[j-1] s_j; this is the
    Savitzky-Golay interior filter (antisymmetric, resp. symmetric and summing to zero),
    exactly 0 on constant stretches. Computed on the flattened array with contiguous
    shifts: frames within ``half`` of either end of a row mix neighbouring rows and are
    meaningless, but they are never a segment's interior, which is all that is used.
    """
    half = odd_taps.shape[0]
    flat = np.ascontiguousarray(sources, dtype=np.float32).reshape(-1)
    first, second = np.zeros((2,) + flat.shape, dtype=np.float32)
    size = flat.shape[0] - 2 * half
    if size > 0:
        centre = flat[half:half + size]
        twice_centre = centre + centre
        acc1, acc2 = first[half:half + size], second[half:half + size]
        step = np.empty(size, dtype=np.float32)
        for j in range(1, half + 1):
            ahead, behind = flat[half + j:half + j + size], flat[half - j:half - j + size]
            np.subtract(ahead, behind, out=step)
            step *= np.float32(odd_taps[j - 1])
            acc1 += step
            np.add(ahead, behind, out=step)
            step -= twice_centre
            step *= np.float32(even_taps[j - 1])
            acc2 += step
    return first.reshape(sources.shape), second.reshape(sources.shape)


def _edge_deltas(static: np.ndarray, ops: tuple[np.ndarray, np.ndarray], rows: slice,
                 cols: slice) -> np.ndarray:
    """Delta and delta-delta at the edge frames ``rows`` of every segment (..., L), from
    the segment's frames ``cols`` (polynomial fits): returns (2, ..., len(rows))."""
    block = static[..., cols]
    mid = block.shape[-1] // 2
    centred = (block - block[..., mid:mid + 1]).reshape(-1, block.shape[-1])  # rows sum to 0
    both = np.concatenate([op[rows, cols] for op in ops]).T.astype(np.float32)
    out = centred @ both  # (M, 2 * n_rows)
    n_rows = both.shape[1] // 2
    return np.stack([out[:, :n_rows], out[:, n_rows:]]).reshape(
        (2,) + static.shape[:-1] + (n_rows,))


def _delta_channels(sources: np.ndarray, static: np.ndarray, out: np.ndarray, n: int,
                    hop: int, width: int) -> None:
    """Delta and delta-delta of every segment along time into ``out`` (V, n, 2, F, L),
    from the segment views ``static`` (V, n, F, L) of ``sources`` (V, F, T).

    A segment's interior frames need only frames inside it, so they equal the regression
    filters run once over the whole source: one pass instead of one per overlapping
    segment. The half-width edge frames (polynomial fits over the segment's first / last
    ``width`` frames) are then computed per segment.
    """
    length = static.shape[-1]
    half = width // 2
    ops = (_delta_operator(length, int(width), 1), _delta_operator(length, int(width), 2))
    centre_row = [op[half, :width] for op in ops]
    odd = (centre_row[0][half + 1:] - centre_row[0][half - 1::-1]) / 2
    even = (centre_row[1][half + 1:] + centre_row[1][half - 1::-1]) / 2
    for order, filtered in enumerate(_interior_deltas(sources, odd, even)):
        out[:, :, order] = _segment_view(filtered, n, length, hop)
    lo = _edge_deltas(static, ops, slice(0, half), slice(0, width))
    hi = _edge_deltas(static, ops, slice(length - half, length),
                      slice(length - width, length))
    for order in range(2):
        out[:, :, order, :, :half] = lo[order]
        out[:, :, order, :, length - half:] = hi[order]


def _logmel_images(logmels: np.ndarray, config: FrontEndConfig) -> np.ndarray:
    """Images (V, n, 3, F, frames) of log-Mels (V, F, T): segment_images(segment(.)) of
    each, computed for all of them at once."""
    frames, hop, width = config.segment_frames, config.segment_hop, config.delta_width
    V, n_bands, T = logmels.shape
    n = n_segments(T, frames, hop)
    _check_delta_args(frames, width, 2)
    sources = _sources(logmels, frames, hop)
    images = np.empty((V, n, 3, n_bands, frames), dtype=np.float32)
    images[:, :, 0] = _segment_view(sources, n, frames, hop)
    _delta_channels(sources, images[:, :, 0], images[:, :, 1:], n, hop, width)
    _minmax_per_image_channel(images.reshape(V * n, 3, n_bands, frames))
    return images


def utterance_images(signal: np.ndarray, config: FrontEndConfig = _DEFAULT) -> np.ndarray:
    """Images (n, 3, F, segment_frames) float32 in [0, 1] of one signal (N,) at
    ``config.sample_rate``: log_mel -> segment -> segment_images (with config's segment
    frames, segment hop and delta width)."""
    signal = np.asarray(signal)
    if signal.ndim != 1:
        raise BinserError(f"expected a 1-D signal (N,), got shape {signal.shape}")
    logmels = log_mel_batch(signal[None, :], config.sample_rate, config)
    return _logmel_images(logmels, config)[0]


def views_images(views: Mapping[str, np.ndarray],
                 config: FrontEndConfig = _DEFAULT) -> dict[str, np.ndarray]:
    """Images per view, {name: (n, 3, F, segment_frames)}, of views {name: (N,)} at
    ``config.sample_rate``, equal to ``utterance_images`` of each view. Equally long views
    share one batched log-Mel and one image pass (views of different lengths are done one
    by one)."""
    names = list(views)
    signals = [np.asarray(views[name]) for name in names]
    if any(s.ndim != 1 for s in signals):
        raise BinserError("every view must be a 1-D signal (N,)")
    if len({s.shape[0] for s in signals}) != 1:
        return {name: utterance_images(s, config) for name, s in zip(names, signals)}
    logmels = log_mel_batch(np.stack(signals), config.sample_rate, config)
    images = _logmel_images(logmels, config)
    return dict(zip(names, images))
