"""Room acoustics of a scene: geometry, binaural room impulse response (BRIR), diffuse noise.

Coordinates: metres, x/y on the floor, z up. The head sits at ``head`` facing the horizontal
direction ``yaw`` (degrees, counter-clockwise from +x); a direction's azimuth is measured
from the facing direction, counter-clockwise (+90 = left), as in :mod:`.hrir`.

**Room** (:func:`draw_room`): a shoebox of length 4-10 m, width 3-8 m, height 2.5-4 m (uniform
draws), one frequency-independent energy absorption coefficient on every wall from Sabine's
formula ``alpha = 0.161 V / (S * RT60)`` (V volume in m^3, S wall area in m^2; a room too
large for the RT60 (alpha > 0.9) is shrunk until alpha = 0.9). Head 1-1.8 m high, at least
0.8 m from the walls (redrawn, up to 100 times, until every source of the scene can be 1 m
away; else the room's centre); each source at the head's height (elevation 0) in the
direction ``azimuth``, at a distance uniform in 1-2.5 m cut to stay 0.5 m inside the walls.

**BRIR** (:func:`room_brir`, shape (2, L), direct sound at sample 0):

* early part: the image sources of the room up to order :data:`MAX_ORDER` (image positions
  and wall damping from ``pyroomacoustics``' image-source model); image ``i`` at distance
  ``d_i`` with damping ``b_i`` (product of the wall amplitude reflection coefficients
  ``sqrt(1 - alpha)``) adds ``b_i * r / d_i`` times the HRIR of the measured direction nearest
  to its direction of arrival, delayed by ``round((d_i - r) / c * 16000)`` samples (c = 343
  m/s, r = the direct distance, so the direct sound has gain 1 and delay 0);
* late tail from ``t0`` = the earliest arrival of an order-:data:`MAX_ORDER` image, to
  ``t0 + RT60``: diffuse noise (below) times ``exp(-(t - t0) * 3 ln(10) / RT60)`` (amplitude;
  the energy falls by 60 dB in RT60 seconds), faded in over 5 ms, scaled so that each ear's
  mean tail energy is Sabine's diffuse-field share ``E_d * 16 pi r^2 / A * exp(-t0 / tau)``
  with ``A = S * alpha``, ``tau = RT60 / (6 ln 10)`` and ``E_d`` the direct energy of a
  diffuse-average HRIR (the mean over ears and measured directions);
* **DRR** = ``10 log10(E_direct / E_reverberant)`` dB, energies summed over both ears of the
  BRIR: direct = the order-0 image's HRIR, reverberant = everything else.

**Diffuse noise** (:func:`diffuse_noise`): the sum of independent Gaussian noises arriving
from every measured direction of the HRIR set with equal power, each through its HRIR. It is
drawn directly with those second-order statistics: per frequency bin, the two ears' spectra
are ``shape(f) * L(f) z`` with ``z`` two independent unit complex Gaussians and ``L`` the
Cholesky factor of the direction-averaged cross-spectral matrix ``mean_k H_k H_k^H`` (so the
interaural coherence is that of the measured field: near 1 at low frequencies, near 0 high).
Shapes: ``pink`` (power proportional to 1/f above 20 Hz, 0 at DC) and ``speech`` (the
long-term spectrum of the target utterance, Welch, 512-sample Hann segments).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
import numpy as np

from .hrir import SAMPLE_RATE, HRIRSet

MAX_ORDER = 3
SPEED_OF_SOUND = 343.0
ROOM_RANGES = ((4.0, 10.0), (3.0, 8.0), (2.5, 4.0))
HEAD_HEIGHT = (1.0, 1.8)
HEAD_MARGIN = 0.8
SOURCE_DISTANCE = (1.0, 2.5)
SOURCE_MARGIN = 0.5
HEAD_TRIES = 100
MAX_ABSORPTION = 0.9
TAIL_FADE_S = 0.005
NOISE_TYPES = ("pink", "speech")


@dataclass(frozen=True)
class Room:
    """A drawn shoebox room with the listener in it (see the module docstring)."""

    dims: np.ndarray        # (3,) metres
    head: np.ndarray        # (3,) metres
    yaw: float              # degrees
    rt60: float             # seconds
    absorption: float       # energy absorption coefficient of every wall

    @property
    def volume(self) -> float:
        return float(np.prod(self.dims))

    @property
    def surface(self) -> float:
        lx, ly, lz = self.dims
        return float(2 * (lx * ly + lx * lz + ly * lz))


def sabine_absorption(dims, rt60: float) -> float:
    """``0.161 V / (S * RT60)`` for a shoebox of ``dims`` metres."""
    lx, ly, lz = dims
    return 0.161 * lx * ly * lz / (2 * (lx * ly + lx * lz + ly * lz) * rt60)


def draw_room(rng: np.random.Generator, rt60: float, azimuths=(0.0,)) -> Room:
    """A room, head position and facing direction for ``rt60`` seconds (module docstring),
    with room for a source at least 1 m away in each of ``azimuths`` (degrees)."""
    dims = np.array([rng.uniform(lo, hi) for lo, hi in ROOM_RANGES])
    alpha = sabine_absorption(dims, rt60)
    if alpha > MAX_ABSORPTION:   # alpha scales with the room's size: shrink it
        dims = dims * MAX_ABSORPTION / alpha
        alpha = MAX_ABSORPTION
    yaw = float(rng.uniform(0, 360))
    margin = np.minimum(HEAD_MARGIN, dims / 2 * 0.9)
    z = rng.uniform(min(HEAD_HEIGHT[0], dims[2] / 2), min(HEAD_HEIGHT[1], dims[2] - 0.3))
    room = Room(dims=dims, head=np.array([dims[0] / 2, dims[1] / 2, z]), yaw=yaw,
                rt60=float(rt60), absorption=float(alpha))
    for _ in range(HEAD_TRIES):   # else the room's centre (the most room in every direction)
        head = np.array([rng.uniform(margin[0], dims[0] - margin[0]),
                         rng.uniform(margin[1], dims[1] - margin[1]), z])
        candidate = dataclasses.replace(room, head=head)
        if all(free_distance(candidate, a) >= SOURCE_DISTANCE[0] for a in azimuths):
            return candidate
    return room


def free_distance(room: Room, azimuth: float) -> float:
    """How far a source can be from the head at ``azimuth`` and stay 0.5 m inside the
    walls (metres)."""
    angle = np.radians(room.yaw + azimuth)
    step = np.array([np.cos(angle), np.sin(angle)])
    lo, hi = SOURCE_MARGIN, room.dims[:2] - SOURCE_MARGIN
    with np.errstate(divide="ignore", invalid="ignore"):
        limits = np.where(step > 0, (hi - room.head[:2]) / step,
                          np.where(step < 0, (lo - room.head[:2]) / step, np.inf))
    return float(np.min(limits))


def place_source(rng: np.random.Generator, room: Room, azimuth: float) -> np.ndarray:
    """A source at ``azimuth`` (degrees from the facing direction), at ear height, at a
    distance uniform in 1-2.5 m, limited to :func:`free_distance` (so 0.5 m inside the
    walls; in a room too small for 1 m, the free distance itself)."""
    free = free_distance(room, azimuth)
    low, high = SOURCE_DISTANCE
    distance = rng.uniform(low, min(high, free)) if free > low else max(free, 0.1)
    angle = np.radians(room.yaw + azimuth)
    return room.head + distance * np.array([np.cos(angle), np.sin(angle), 0.0])


@dataclass
class ImageSources:
    """Image sources seen from the head: ``vectors`` (n, 3) head -> image in the head's
    frame (x front, y left, z up), ``distances`` (n,), ``damping`` (n,) wall amplitude
    factor, ``orders`` (n,) reflection order (0 = the direct sound)."""

    vectors: np.ndarray
    distances: np.ndarray
    damping: np.ndarray
    orders: np.ndarray


def image_sources(room: Room, source: np.ndarray, max_order: int = MAX_ORDER) -> ImageSources:
    """The room's image sources up to ``max_order`` by ``pyroomacoustics``' image-source
    model (shoebox: every image is visible)."""
    import pyroomacoustics as pra

    shoebox = pra.ShoeBox(room.dims, fs=SAMPLE_RATE, materials=pra.Material(room.absorption),
                          max_order=max_order, air_absorption=False, ray_tracing=False)
    shoebox.add_source(np.asarray(source, float))
    shoebox.add_microphone(room.head)
    shoebox.image_source_model()
    src = shoebox.sources[0]
    visible = np.asarray(shoebox.visibility[0][0], bool)
    images = np.asarray(src.images, float)[:, visible].T          # (n, 3)
    offsets = images - room.head
    yaw = np.radians(room.yaw)
    cos, sin = np.cos(yaw), np.sin(yaw)
    head_frame = np.stack([cos * offsets[:, 0] + sin * offsets[:, 1],
                           -sin * offsets[:, 0] + cos * offsets[:, 1], offsets[:, 2]], axis=1)
    return ImageSources(vectors=head_frame, distances=np.linalg.norm(offsets, axis=1),
                        damping=np.asarray(src.damping, float)[0, visible],
                        orders=np.asarray(src.orders)[visible])


@dataclass
class BRIR:
    """A binaural room impulse response (2, L) with its direct part and facts."""

    ir: np.ndarray
    direct: np.ndarray
    drr_db: float
    hrir_index: int          # measured direction of the direct sound
    tail_start_s: float
    extras: dict = field(default_factory=dict)


def room_brir(rng: np.random.Generator, hrirs: HRIRSet, room: Room,
              source: np.ndarray) -> BRIR:
    """The BRIR from ``source`` to the head in ``room`` (module docstring)."""
    images = image_sources(room, source)
    r = float(images.distances[images.orders == 0][0])
    delays = np.rint((images.distances - r) / SPEED_OF_SOUND * SAMPLE_RATE).astype(int)
    gains = images.damping * r / images.distances
    index = hrirs.nearest_vectors(images.vectors)
    taps = hrirs.taps
    order_k = images.orders == images.orders.max()
    t0 = int(delays[order_k].min()) if images.orders.max() > 0 else 0
    tail_len = int(round(room.rt60 * SAMPLE_RATE))
    ir = np.zeros((2, max(int(delays.max()) + taps, t0 + tail_len)))
    for delay, gain, k in zip(delays, gains, index):
        ir[:, delay:delay + taps] += gain * hrirs.ir[k]
    direct_i = int(np.flatnonzero(images.orders == 0)[0])
    direct = np.zeros_like(ir)
    direct[:, :taps] = gains[direct_i] * hrirs.ir[index[direct_i]]
    ir[:, t0:t0 + tail_len] += late_tail(rng, hrirs, room, r, t0, tail_len)
    reverberant = ir - direct
    drr = 10 * np.log10(np.sum(direct ** 2) / np.sum(reverberant ** 2))
    return BRIR(ir=ir, direct=direct, drr_db=float(drr), hrir_index=int(index[direct_i]),
                tail_start_s=t0 / SAMPLE_RATE,
                extras={"images": int(len(delays)), "distance_m": r})


def late_tail(rng: np.random.Generator, hrirs: HRIRSet, room: Room, distance: float,
              t0: int, length: int) -> np.ndarray:
    """(2, length) exponentially decaying diffuse noise starting ``t0`` samples after the
    direct sound, at Sabine's level (module docstring)."""
    t = np.arange(length) / SAMPLE_RATE
    envelope = np.exp(-t * 3 * np.log(10) / room.rt60)
    fade = min(length, int(TAIL_FADE_S * SAMPLE_RATE))
    envelope[:fade] *= 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
    tail = diffuse_noise(rng, hrirs, length) * envelope
    tau = room.rt60 / (6 * np.log(10))
    direct_energy = hrirs.mean_energy
    area = room.surface * room.absorption
    wanted = direct_energy * 16 * np.pi * distance ** 2 / area * np.exp(-t0 / SAMPLE_RATE / tau)
    have = float(np.mean(np.sum(tail ** 2, axis=1)))
    return tail * np.sqrt(wanted / have) if have > 0 else tail


def diffuse_noise(rng: np.random.Generator, hrirs: HRIRSet, n: int, kind: str | None = None,
                  signal: np.ndarray | None = None) -> np.ndarray:
    """(2, n) diffuse noise through the HRIRs (module docstring): ``kind`` None (white before
    the HRIRs), ``pink`` or ``speech`` (shaped like ``signal``'s long-term spectrum). Drawn
    on a fast FFT length >= n, then cut to n samples."""
    from scipy.fft import irfft, next_fast_len

    nfft = next_fast_len(n, real=True)
    freqs, a, b, c = hrirs.diffuse_cross_spectra
    f = np.fft.rfftfreq(nfft, 1 / SAMPLE_RATE)
    a, b = np.interp(f, freqs, a), np.interp(f, freqs, b)
    c = np.interp(f, freqs, c.real) + 1j * np.interp(f, freqs, c.imag)
    l11 = np.sqrt(np.maximum(a, 1e-20))
    l21 = np.conj(c) / l11
    l22 = np.sqrt(np.maximum(b - np.abs(l21) ** 2, 0.0))
    z = rng.standard_normal((2, 2, f.size))
    z = (z[:, 0] + 1j * z[:, 1]) / np.sqrt(2)
    spectra = np.stack([l11 * z[0], l21 * z[0] + l22 * z[1]])
    if kind is not None:
        spectra *= noise_shape(kind, nfft, signal)
    return irfft(spectra, n=nfft, axis=-1)[:, :n]


def noise_shape(kind: str, n: int, signal: np.ndarray | None = None) -> np.ndarray:
    """Amplitude per bin of ``rfftfreq(n, 1/16000)`` for ``pink`` or ``speech`` noise (the
    latter needs the utterance ``signal``)."""
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    if kind == "pink":
        shape = 1.0 / np.sqrt(np.maximum(f, 20.0))
    elif kind == "speech":
        from scipy.signal import welch

        seg = min(512, len(signal))
        wf, psd = welch(signal, fs=SAMPLE_RATE, nperseg=seg)
        shape = np.sqrt(np.interp(f, wf, psd))
    else:
        raise ValueError(f"unknown noise type {kind!r}; known: {', '.join(NOISE_TYPES)}")
    shape[0] = 0.0
    return shape
