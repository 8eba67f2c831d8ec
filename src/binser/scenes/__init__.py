"""Binaural scenes: each utterance of a corpus placed in a simulated room around a dummy head.

``make_scenes(corpus, out, SceneSettings(...))`` (the command ``binser scenes``) turns every
source utterance, reduced to mono (its first channel by default, or the mean of its channels),
into a 16 kHz 16-bit stereo FLAC ``out/<source path>.flac`` holding:

1. the **target**: the utterance convolved (FFT convolution) with a binaural room impulse
   response (BRIR, :mod:`.acoustics`) built from head-related impulse responses (HRIRs,
   :mod:`.hrir`; the MIT KEMAR set by default), for a source at an **azimuth** drawn uniformly
   from ``settings.azimuth`` (degrees; 0 = straight ahead, counter-clockwise, +90 = the
   listener's left, -90 = right), elevation 0, 1-2.5 m away (0.5 m inside the walls; the
   azimuth in the file's row is the drawn one, ``hrir_azimuth_deg`` the nearest measured
   direction whose HRIR carries the direct sound) in a shoebox room whose **RT60**
   (seconds, for 60 dB of energy decay) is drawn uniformly from ``settings.rt60``: the direct
   sound and the image sources up to order 3 (``pyroomacoustics``), each through the HRIR of
   the measured direction nearest to its direction of arrival, plus a diffuse late tail whose
   amplitude decays as ``exp(-t * 3 ln(10) / RT60)``. **DRR** = ``10 log10(E_direct /
   E_reverberant)`` over both ears of the BRIR (direct = the direct sound's HRIR part);
2. **diffuse noise**, pink (power ~ 1/f) or speech-shaped (the target utterance's own
   long-term spectrum), equally likely, from every measured direction through the HRIRs
   (:func:`.acoustics.diffuse_noise`), at an **SNR** drawn from ``settings.snr`` (dB):
   ``SNR = 10 log10(sum over both ears and all samples of target^2 / same of noise^2)``, the
   target being the reverberant target at the ears (interferer not included);
3. with probability ``settings.interferer_prob``, a **competing talker**: an utterance of
   another speaker of the same corpus (uniformly among all their utterances), looped or cut
   to the target's length from a random start, in the same room at another azimuth (uniform
   over the azimuth range at least 20 degrees from the target's, else over the whole circle)
   at a **SIR** drawn from ``settings.sir``: ``SIR = 10 log10(E_target / E_interferer)``,
   energies of the reverberant signals at the ears, both ears together.

The file is the sum of the three, scaled by one gain so that the target's RMS over both ears
is -26 dBFS (less if the mixture's peak would pass 0.99), so SNR and SIR hold in the file up
to 16-bit rounding. Its length is the source's (the direct sound arrives at sample 0; the
reverberation after the source's end is cut).

Every file's draws come from ``numpy.random.SeedSequence([seed, h])``, ``h`` from the SHA-256
of the source's path relative to the corpus root (:func:`.generate.file_rngs`): a file's scene
does not depend on which other files were made or in which order. ``out/scenes.csv`` lists
``path, label, speaker, split`` (the source's) and the scene's parameters (source, azimuth_deg,
hrir_azimuth_deg, distance_m, room_m, rt60_s, absorption, drr_db, snr_db, noise, interferer,
interferer_speaker, interferer_azimuth_deg, sir_db, seed); ``corpus("scenes", out)`` (``--dataset
scenes --root out``) reads it back with the source's speakers and labels. Runs are resumable
(:mod:`.run`).

Caveat for evaluation: under speaker-independent folds, a training scene's competing talker
can be a test speaker's utterance; the ``interferer`` and ``interferer_speaker`` columns say
which.
"""
from .acoustics import BRIR, NOISE_TYPES, Room, diffuse_noise, draw_room, room_brir
from .generate import (Scene, SceneSettings, energy, file_rngs, level_ratio_db, parse_range,
                       parse_values, render_scene)
from .hrir import HRIRSet, default_hrir_path, load_hrir
from .run import COLUMNS, MANIFEST, SETTINGS_FILE, load_mono, make_scenes

__all__ = [
    "BRIR", "COLUMNS", "HRIRSet", "MANIFEST", "NOISE_TYPES", "Room", "SETTINGS_FILE", "Scene",
    "SceneSettings", "default_hrir_path", "diffuse_noise", "draw_room", "energy", "file_rngs",
    "level_ratio_db", "load_hrir", "load_mono", "make_scenes", "parse_range", "parse_values",
    "render_scene", "room_brir",
]
