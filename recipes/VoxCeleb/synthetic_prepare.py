"""Generates the embedded audio-visual corpus, a synthetic stand-in for VoxCeleb2.

No download is possible in tests, CI or ``make demo``, so this module draws a
small corpus of talking "people" with known ground truth and writes it in the
same folder layout and csv format as the real VoxCeleb preparation. Because
it is known which factors the two modalities share, the corpus doubles as a
controlled benchmark of cross-modal distillation: the face teacher can only
pass on what faces and voices have in common.

Layout (``D`` = ``data_folder``, ``S`` = ``save_folder``)::

    D/wav/<spk_id>/<session>/<utt>.wav   16 kHz mono PCM16 (VoxCeleb2 audio
                                         already converted to wav)
    D/faces/<spk_id>/<session>.png       one aligned 112x112 RGB face per
                                         session (= per video), on the
                                         ArcFace 5-point template
    D/veri_test_synthetic.txt            trial list, VoxCeleb1 format
    D/meta.csv                           every identity's attributes, split
    D/low_quality_faces.txt              degraded faces (paths relative to D)
    D/low_quality_wavs.txt               degraded utterances (relative to D)
    D/noise/{babble,music,stationary}_NN.wav  noise for robustness tests
    D/synthetic_params.json              what generated D (guards reuse)
    S/train.csv, S/dev.csv               training segments, split 90/10 by
                                         utterance
    S/enrol.csv, S/test.csv              utterances of the trial list
    S/noise.csv                          the noise recordings (ID,duration,wav)
    S/synthetic_report.json              counts, seed, parameters and the
                                         low-quality lists

Speaker ids are ``id9NNNN``: training identities ``id90001...``, test
identities from the next hundred (``id90101...`` for up to 100 training
identities); the two sets are disjoint. Session ids are 11 characters from
the YouTube alphabet, utterances ``00001.wav`` ... within each session.

CSV format: header ``ID,duration,wav,start,stop,spk_id,face``, as
SpeechBrain's ``voxceleb_prepare.py`` plus the ``face`` column. ``ID`` is
``<spk>--<session>--<utt>_<start_s>_<end_s>``, ``duration`` the length of
the whole file in seconds, ``start``/``stop`` in samples; each file is cut
into non-overlapping ``seg_dur`` chunks (chunks with mean ``|x|`` under
``amp_th`` dropped), or gives one row when ``random_segment=True``. In
``enrol.csv``/``test.csv`` the ID is ``<spk>/<session>/<utt>`` (the trial
list's path without ``.wav``), one row per file, as in SpeechBrain. Paths
use SpeechBrain's replacement convention: ``$data_root/wav/...`` and
``$data_root/faces/...``, resolved by
``DynamicItemDataset.from_csv(path, replacements={"data_root": data_folder})``
(or ``speechbrain.dataio.dataio.load_data_csv``); the csv files therefore do
not depend on where the corpus lies and can be moved with it.

Generative model
----------------
Every random draw comes from ``numpy.random.default_rng([seed, stream,
*keys])`` keyed by what is being drawn (identity, session, utterance), so
the same seed gives byte-identical files and any single file can be
regenerated alone.

Identity attributes shared by face and voice (the cross-modal signal):

- ``gender`` in {0, 1}, balanced within each split (0 = male-like: lower
  pitch, longer vocal tract, wider jaw, longer face, thick low brows;
  1 = female-like).
- ``age`` uniform in [0, 1] (age-like factor): lowers f0 for gender 1 and
  raises it slightly for gender 0, lowers formants (longer tract), widens
  the jaw, lengthens the face and draws wrinkles (forehead lines,
  nasolabial folds) of strength ``wrinkle``.
- Voice side: ``f0_hz`` = 115 Hz (gender 0) or 205 Hz (gender 1), times the
  age term, times an individual log-normal offset (sd 7%, truncated at
  2 sd, so the gender ranges never overlap); ``formant_scale`` (vocal-tract
  length) = 1.0 or 1.16 times age and individual (sd 2.5%) terms.
- Face side: ``jaw_half_width`` (half face width at the mouth corners,
  33.5 or 28 px), ``cheek_half_width``, ``chin_y`` (face length), the jaw
  outline below the mouth (a superellipse, squarer for gender 0),
  ``brow_thickness``, ``brow_raise`` (brow height above the eye), neck
  width, ``wrinkle``. Individual offsets are small (truncated normals), so
  gender 0 and 1 ranges of f0, formant scale, jaw width and brow thickness
  do not overlap.

Face-only attributes: ``skin_tone`` (continuous, light to dark),
``hair_colour`` and ``hair_style`` (short, long, side_part, buzz, curly,
bald; curl placement and parting side), ``hairline_y``, ``eye_colour``
(iris colour), ``nose_width``, ``lip_thickness``, ``ear_size``, ``mole``
(present in 30%, position).

Voice-only attributes (timbre and prosody): ``spectral_tilt_db`` (dB per
octave above 500 Hz), ``open_quotient`` and ``speed_quotient`` of the
Rosenberg glottal pulse (harmonic richness: a shorter closing phase gives
stronger high harmonics), ``breathiness`` (aspiration noise, also widening
formant bandwidths via ``bandwidth_scale``), ``speaking_rate`` (syllables
per second), ``intonation`` (size of pitch accents) and a per-vowel
``accent`` (individual formant offsets, sd 3.5%).

Per-session variability (one session = one video):

- audio channel: three random peaking EQ bands (+-8 dB), a high-pass
  (60-250 Hz) and low-pass (3.4-7.6 kHz) edge, a level of -22 dBFS plus
  -10 to 0 dB, reverberation in 35% of sessions (exponentially decaying
  noise impulse response, RT60 0.15-0.5 s, direct-to-reverberant ratio
  0-8 dB), stationary coloured (1/f^0.5 to 1/f^2) background noise at
  25-40 dB SNR (SNRs are relative to the utterance RMS), and a session
  pitch shift (sd 3%);
- face: background colour and gradient, lighting direction and strength,
  brightness, colour temperature, pose jitter (rotation +-5 deg about the
  face centre, scale +-5%, shift +-2 px, so landmarks stay within a few
  pixels of the template), hair outline +-1 px, expression (mouth opening
  and smile, eye opening, catch-light), sensor noise (sd 1.5 grey levels).

Per-utterance variability: duration uniform in ``utt_duration``; content is a
random syllable sequence (optional onset: stop, fricative /s/ /sh/ /f/,
nasal or glide; then one of ten vowels with Hillenbrand et al. (1995)
formant targets, sometimes a diphthong), with formant trajectories
interpolated between targets, raised-cosine syllable envelopes, word and
phrase pauses, and leading and trailing silence; pitch contour = phrase
declination + accents on stressed syllables + slow drift + jitter, around
an utterance offset (sd 3%); speaking rate varies +-8%.

Speech is a source-filter signal: a Rosenberg glottal pulse train at f0
(differentiated for lip radiation) plus pulse-gated aspiration noise,
filtered frame by frame (STFT, 32 ms frames, 16 ms hop) by five formant
resonances, the spectral tilt and the syllable envelope; fricatives and
bursts are band-passed noise; then the session channel is applied.

Low quality: ``round(low_quality_share * N)`` faces (of all sessions) and,
independently, ``round(low_quality_share * N)`` utterances (of all
utterances) are degraded: faces get a Gaussian blur (sigma 1.6-2.6 px) and
are darkened (x0.3-0.5, gamma 1.3); utterances get babble, music or
stationary noise at 0-6 dB SNR (from noise recordings other than those in
``D/noise``). The lists are in ``D/low_quality_*.txt`` and in the report;
``round`` rounds halves up.

Noise recordings (``D/noise`` for robustness tests, and the pool that
degrades low-quality utterances, drawn from other streams), RMS -26 dBFS:
babble = 6-9 talkers that are not corpus identities, each circularly
shifted so that their pauses do not coincide; music = a pentatonic
sustained pad, bass, two melody lines of harmonic tones with decaying
envelopes, a kick and a hi-hat; stationary = coloured noise with three
ventilation-like resonances and, in half of them, mains hum (50 or 60 Hz
and harmonics).

Trials: every pair of utterances of the same test identity from different
sessions (same session only when there is one session) is a target trial;
as many non-target pairs of different test identities are drawn; both are
subsampled to ``max_trials // 2`` each.

Example
-------
::

    python recipes/VoxCeleb/synthetic_prepare.py \\
        --data_folder data/synthetic --save_folder results/synthetic/save
"""

import argparse
import functools
import io
import json
import logging
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import cv2
import numpy as np
import soundfile as sf
import scipy.fft
from scipy import signal as sps
from speechbrain_xmkd.fileio import atomic_write_bytes, csv_text, remove_partial_files, write_if_changed

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
FACE_SIZE = 112
# Destination of the 5-point alignment (left eye, right eye, nose, mouth
# corners) used by ArcFace / face.evoLVe for 112x112 crops.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)
CSV_HEADER = ["ID", "duration", "wav", "start", "stop", "spk_id", "face"]
DATA_ROOT = "$data_root"
TRIAL_FILE = "veri_test_synthetic.txt"
NOISE_TYPES = ("babble", "music", "stationary")
SESSION_ALPHABET = (
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
)

# Random streams: one per kind of draw, so adding draws to one kind never
# shifts another.
_STREAMS = {
    "identity": 1,
    "gender": 2,
    "session": 3,
    "session_face": 4,
    "session_name": 5,
    "utterance": 6,
    "quality": 7,
    "split": 8,
    "trials": 9,
    "noise_file": 10,
    "noise_pool": 11,
}

# Vowel formant targets F1-F3 (Hz) of an adult male vocal tract, Hillenbrand
# et al. (1995); other speakers scale them by ``formant_scale``.
VOWELS = {
    "iy": (342, 2322, 3000),
    "ih": (427, 2034, 2684),
    "ey": (476, 2089, 2691),
    "eh": (580, 1799, 2605),
    "ae": (588, 1952, 2601),
    "aa": (768, 1333, 2522),
    "ao": (652, 997, 2538),
    "uh": (469, 1122, 2434),
    "uw": (378, 997, 2343),
    "er": (474, 1379, 1710),
}
VOWEL_NAMES = tuple(VOWELS)
HIGHER_FORMANTS = (3400.0, 4300.0)  # F4, F5 of the reference tract
BANDWIDTHS = np.array([80.0, 100.0, 140.0, 220.0, 280.0])
GLIDES = {
    "y": (300, 2200, 3000),
    "w": (320, 750, 2300),
    "l": (360, 1000, 2700),
    "r": (420, 1200, 1600),
}
NASAL = (260, 1100, 2300)
# Syllable onsets and their probabilities.
ONSETS = ("none", "nasal", "glide", "stop", "fric_s", "fric_sh", "fric_f")
ONSET_P = (0.25, 0.15, 0.10, 0.25, 0.10, 0.07, 0.08)
# Noise bands (Hz) and levels relative to the vowel level.
FRICATIVES = {
    "fric_s": ((4000, 7600), 0.12),
    "fric_sh": ((2000, 5500), 0.15),
    "fric_f": ((1500, 7000), 0.05),
    "burst": ((1200, 7000), 0.25),
}

SKIN_TONES = np.array(
    [
        [241, 206, 182],
        [214, 168, 132],
        [176, 124, 88],
        [120, 80, 55],
        [82, 55, 38],
    ],
    dtype=float,
)
HAIR_COLOURS = {
    "black": (28, 22, 20),
    "dark_brown": (62, 42, 30),
    "brown": (110, 74, 48),
    "auburn": (135, 62, 36),
    "blond": (206, 170, 104),
    "ash_blond": (172, 156, 126),
    "red": (176, 80, 42),
}
HAIR_STYLES = ("short", "long", "side_part", "buzz", "curly", "bald")
EYE_COLOURS = {
    "brown": (105, 62, 30),
    "dark_brown": (58, 34, 20),
    "hazel": (132, 102, 52),
    "green": (72, 122, 70),
    "blue": (72, 122, 184),
    "grey": (128, 140, 152),
}

META_COLUMNS = [
    "spk_id",
    "split",
    "gender",
    "age",
    # voice from the shared attributes
    "f0_hz",
    "formant_scale",
    # face from the shared attributes
    "jaw_half_width",
    "cheek_half_width",
    "chin_y",
    "brow_thickness",
    "brow_raise",
    "wrinkle",
    # face only
    "skin_tone",
    "hair_colour",
    "hair_style",
    "hairline_y",
    "eye_colour",
    "nose_width",
    "lip_thickness",
    "ear_size",
    "mole",
    # voice only
    "spectral_tilt_db",
    "open_quotient",
    "speed_quotient",
    "breathiness",
    "bandwidth_scale",
    "speaking_rate",
    "intonation",
]


def _rng(seed, stream, *keys):
    """Independent generator for one named draw (see ``_STREAMS``)."""
    return np.random.default_rng([seed, _STREAMS[stream], *keys])


def _truncnorm(rng, sd, limit=2.0):
    """Normal draw with standard deviation ``sd``, clipped at ``limit`` sd."""
    return sd * float(np.clip(rng.standard_normal(), -limit, limit))


# --------------------------------------------------------------------------
# Identities
# --------------------------------------------------------------------------


def draw_identity(rng, gender):
    """Draws the attributes of one identity (see the module docstring).

    Arguments
    ---------
    rng : numpy.random.Generator
        Source of randomness (one per identity).
    gender : int
        The shared binary factor, 0 or 1.

    Returns
    -------
    dict
        Attribute name -> value; ``accent`` holds the per-vowel formant
        multipliers, ``mole`` is ``None`` or an (x, y) position.

    Example
    -------
    >>> a = draw_identity(np.random.default_rng(0), gender=0)
    >>> b = draw_identity(np.random.default_rng(0), gender=1)
    >>> bool(a["f0_hz"] < b["f0_hz"] and a["jaw_half_width"] > b["jaw_half_width"])
    True
    """
    g = int(gender)
    age = float(rng.uniform(0.0, 1.0))
    a = age - 0.5
    ident = {"gender": g, "age": age}
    # Shared factors -> voice.
    f0_age = 0.10 if g == 0 else -0.15
    ident["f0_hz"] = (115.0 if g == 0 else 205.0) * np.exp(
        f0_age * a + _truncnorm(rng, 0.07)
    )
    ident["formant_scale"] = (1.0 if g == 0 else 1.16) * np.exp(
        -0.04 * a + _truncnorm(rng, 0.025)
    )
    # Shared factors -> face (template pixels).
    ident["jaw_half_width"] = (
        (33.5 if g == 0 else 28.0) + 2.0 * a + _truncnorm(rng, 0.7)
    )
    ident["cheek_half_width"] = (39.5 if g == 0 else 37.5) + _truncnorm(
        rng, 0.8
    )
    ident["chin_y"] = (
        (114.0 if g == 0 else 111.0) + 3.0 * a + _truncnorm(rng, 0.6)
    )
    ident["brow_thickness"] = (3.4 if g == 0 else 1.9) + _truncnorm(rng, 0.25)
    ident["brow_raise"] = (6.5 if g == 0 else 9.0) + _truncnorm(rng, 0.6)
    ident["wrinkle"] = float(np.clip((age - 0.3) / 0.7, 0.0, 1.0))
    # Face only.
    ident["skin_tone"] = float(rng.uniform(0.0, 1.0))
    ident["hair_colour"] = str(rng.choice(list(HAIR_COLOURS)))
    ident["hair_shade"] = rng.uniform(0.88, 1.12, size=3)
    ident["hair_style"] = str(rng.choice(HAIR_STYLES))
    ident["hairline_y"] = float(rng.uniform(20.0, 30.0))
    ident["eye_colour"] = str(rng.choice(list(EYE_COLOURS)))
    ident["eye_shade"] = rng.uniform(0.85, 1.15, size=3)
    ident["nose_width"] = float(rng.uniform(9.0, 14.0))
    ident["lip_thickness"] = float(rng.uniform(2.0, 3.5))
    ident["ear_size"] = float(rng.uniform(7.0, 10.0))
    has_mole = rng.random() < 0.3
    mole = (rng.uniform(-24, 24), rng.uniform(62, 86))
    ident["mole"] = (56.0 + mole[0], mole[1]) if has_mole else None
    ident["curl_phase"] = float(rng.uniform(0, 2 * np.pi))
    # Voice only.
    ident["spectral_tilt_db"] = float(rng.uniform(-3.0, 3.0))
    ident["open_quotient"] = float(rng.uniform(0.45, 0.75))
    ident["speed_quotient"] = float(rng.uniform(1.5, 3.5))
    ident["breathiness"] = float(rng.uniform(0.0, 0.3))
    ident["bandwidth_scale"] = (1.0 + ident["breathiness"]) * float(
        rng.uniform(0.85, 1.15)
    )
    ident["speaking_rate"] = float(rng.uniform(3.0, 6.0))
    ident["intonation"] = float(rng.uniform(0.03, 0.12))
    ident["accent"] = np.exp(
        np.clip(rng.standard_normal((len(VOWELS), 3)), -2, 2) * 0.035
    )
    for key in (
        "f0_hz",
        "formant_scale",
        "jaw_half_width",
        "cheek_half_width",
        "chin_y",
        "brow_thickness",
        "brow_raise",
    ):
        ident[key] = float(ident[key])
    return ident


def _speaker_ids(n_train, n_test):
    """Training ids from id90001, test ids from the next hundred."""
    train = [f"id{90001 + i}" for i in range(n_train)]
    first_test = 90001 + 100 * ((n_train + 99) // 100)
    test = [f"id{first_test + i}" for i in range(n_test)]
    return train, test


def _balanced_genders(seed, split, n):
    """Half of each gender (the odd one random), in random order."""
    rng = _rng(seed, "gender", 0 if split == "train" else 1)
    genders = np.array([i % 2 for i in range(n)])
    if n % 2:
        genders[-1] = rng.integers(2)
    return rng.permutation(genders)


def _session_names(seed, gid, n_sessions):
    """Distinct 11-character YouTube-like ids for one identity's videos."""
    rng = _rng(seed, "session_name", gid)
    alphabet = np.array(list(SESSION_ALPHABET))
    names = []
    while len(names) < n_sessions:
        name = "".join(rng.choice(alphabet, size=11))
        # "--" is SpeechBrain's ID separator; keep ids unambiguous.
        if "--" in name or not name[0].isalnum() or not name[-1].isalnum():
            continue
        if name not in names:
            names.append(name)
    return names


# --------------------------------------------------------------------------
# Speech
# --------------------------------------------------------------------------


def _stft_params(sr):
    n_fft = int(2 ** np.ceil(np.log2(0.032 * sr)))
    return n_fft, n_fft // 2


def _filter_by_frames(x, gains):
    """Filters ``x`` with a time-varying magnitude response.

    ``gains[k]`` (``[frames, n_fft // 2 + 1]``) is applied to frame ``k``,
    centred on sample ``k * hop``; sqrt-Hann analysis and synthesis windows
    at 50% overlap add up to one, so a flat response returns ``x``.
    """
    n = len(x)
    n_frames, n_bins = gains.shape
    n_fft = 2 * (n_bins - 1)
    hop = n_fft // 2
    padded = np.zeros((n_frames + 1) * hop)
    padded[hop : hop + n] = x
    window = np.sqrt(np.hanning(n_fft + 1)[:-1])
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    spec = np.fft.rfft(frames * window, axis=1) * gains
    out_frames = np.fft.irfft(spec, n=n_fft, axis=1) * window
    out = np.zeros((n_frames + 1) * hop)
    out[: n_frames * hop] += out_frames[:, :hop].ravel()
    out[hop : (n_frames + 1) * hop] += out_frames[:, hop:].ravel()
    return out[hop : hop + n]


def _envelope(length, attack, release):
    """Raised-cosine attack and release over ``length`` samples."""
    env = np.ones(length)
    attack = min(attack, length // 2)
    release = min(release, length - attack)
    if attack > 0:
        env[:attack] = 0.5 - 0.5 * np.cos(np.pi * np.arange(attack) / attack)
    if release > 0:
        env[length - release :] = 0.5 + 0.5 * np.cos(
            np.pi * np.arange(release) / release
        )
    return env


def _plan_syllables(rate, total, rng):
    """Random syllable sequence with word and phrase pauses.

    Returns a list of dicts with times in seconds, and the phrase spans.
    """
    t = rng.uniform(0.15, 0.4)
    end = total - rng.uniform(0.15, 0.4)
    syllables, phrases = [], []
    phrase_start, in_phrase = t, 0
    phrase_len = rng.integers(5, 11)
    word_left = rng.integers(1, 4)
    while True:
        dur = rng.uniform(0.75, 1.25) / rate
        onset = ONSETS[rng.choice(len(ONSETS), p=ONSET_P)]
        vowel = VOWEL_NAMES[rng.integers(len(VOWEL_NAMES))]
        glide = str(rng.choice(list(GLIDES)))
        diphthong = (
            VOWEL_NAMES[rng.integers(len(VOWEL_NAMES))]
            if rng.random() < 0.2
            else vowel
        )
        stressed = bool(rng.random() < 0.35)
        level = 1.0 if stressed else float(rng.uniform(0.6, 0.85))
        onset_dur = {
            "none": 0.0,
            "nasal": rng.uniform(0.05, 0.08),
            "glide": rng.uniform(0.04, 0.07),
            "stop": rng.uniform(0.045, 0.08),
            "fric_s": rng.uniform(0.07, 0.13),
            "fric_sh": rng.uniform(0.07, 0.13),
            "fric_f": rng.uniform(0.07, 0.13),
        }[onset]
        if t + dur > end:
            if syllables or end - t < 0.1:
                break
            dur = end - t  # a very short file still gets one syllable
        onset_dur = min(onset_dur, max(dur - 0.06, 0.0))
        syllables.append(
            {
                "start": t,
                "vowel_start": t + onset_dur,
                "end": t + dur,
                "onset": onset if onset_dur > 0 else "none",
                "glide": glide,
                "vowel": vowel,
                "vowel_end": diphthong,
                "stressed": stressed,
                "level": level,
            }
        )
        t += dur
        in_phrase += 1
        word_left -= 1
        if in_phrase >= phrase_len:
            phrases.append((phrase_start, t))
            t += rng.uniform(0.25, 0.55)
            phrase_start, in_phrase = t, 0
            phrase_len = rng.integers(5, 11)
            word_left = rng.integers(1, 4)
        elif word_left == 0:
            word_left = rng.integers(1, 4)
            if rng.random() < 0.3:
                t += rng.uniform(0.06, 0.2)
    if in_phrase:
        phrases.append((phrase_start, syllables[-1]["end"]))
    return syllables, phrases


def _resonance_gain(freqs, formant, bandwidth):
    """Magnitude of a second-order resonance, unit gain at 0 Hz.

    ``freqs`` is ``[bins]``; ``formant`` a scalar or ``[frames, 1]``.
    """
    s2 = (0.5 * bandwidth) ** 2
    return (formant**2 + s2) / np.sqrt(
        ((freqs - formant) ** 2 + s2) * ((freqs + formant) ** 2 + s2)
    )


def synthesize_speech(voice, n_samples, rng, sample_rate=16000):
    """Source-filter speech-like signal of one talker.

    Arguments
    ---------
    voice : dict
        Voice attributes as returned by ``draw_identity``; ``f0_hz`` may
        already include a session shift.
    n_samples : int
        Length of the output.
    rng : numpy.random.Generator
        Source of the content (syllables, pitch contour, noise).
    sample_rate : int
        Sampling rate in Hz.

    Returns
    -------
    numpy.ndarray
        Float signal, RMS 1 over voiced regions.

    Example
    -------
    >>> v = draw_identity(np.random.default_rng(0), gender=1)
    >>> x = synthesize_speech(v, 16000, np.random.default_rng(1))
    >>> x.shape, bool(np.isfinite(x).all())
    ((16000,), True)
    """
    sr = sample_rate
    total = n_samples / sr
    rate = voice["speaking_rate"] * rng.uniform(0.92, 1.08)
    syllables, phrases = _plan_syllables(rate, total, rng)
    n_fft, hop = _stft_params(sr)
    n_frames = n_samples // hop + 2
    frame_t = np.arange(n_frames) * hop / sr

    # Voiced amplitude envelope, and the noise segments (start, stop, type).
    voiced = np.zeros(n_samples)
    noise_spans = []
    anchors = []  # (time, F1, F2, F3) formant targets

    def span(t0, t1):
        i0 = min(int(round(t0 * sr)), n_samples)
        return i0, max(min(int(round(t1 * sr)), n_samples), i0)

    ms = sr // 1000
    for syl in syllables:
        accent_a = voice["accent"][VOWEL_NAMES.index(syl["vowel"])]
        accent_b = voice["accent"][VOWEL_NAMES.index(syl["vowel_end"])]
        target_a = np.array(VOWELS[syl["vowel"]]) * accent_a
        target_b = np.array(VOWELS[syl["vowel_end"]]) * accent_b
        onset, t0, tv, t1 = (
            syl["onset"],
            syl["start"],
            syl["vowel_start"],
            syl["end"],
        )
        if onset in ("nasal", "glide"):
            i0, i1 = span(t0, tv + 0.01)
            level = 0.3 if onset == "nasal" else 0.6
            voiced[i0:i1] = np.maximum(
                voiced[i0:i1], level * _envelope(i1 - i0, 10 * ms, 0)
            )
            shape = NASAL if onset == "nasal" else GLIDES[syl["glide"]]
            anchors += [(t0 + 0.01, *shape), (tv - 0.005, *shape)]
        elif onset == "stop":
            burst = min(rng.uniform(0.012, 0.02), tv - t0)
            noise_spans.append((*span(tv - burst, tv), "burst"))
        elif onset.startswith("fric"):
            noise_spans.append((*span(t0, tv), onset))
        i0, i1 = span(tv, t1)
        attack = int(rng.uniform(15, 30) * ms)
        release = int(rng.uniform(30, 60) * ms)
        voiced[i0:i1] = np.maximum(
            voiced[i0:i1], syl["level"] * _envelope(i1 - i0, attack, release)
        )
        steady = min(0.03, 0.25 * (t1 - tv))
        anchors += [(tv + steady, *target_a), (t1 - steady, *target_b)]

    # Formant tracks at frame rate, scaled by the vocal-tract length.
    at = np.array(anchors) if anchors else np.array([[0.0, *VOWELS["aa"]]])
    scale = voice["formant_scale"]
    bandwidths = BANDWIDTHS * voice["bandwidth_scale"]

    # Pitch contour: declination per phrase, accents, drift.
    contour = np.zeros(n_frames)
    for p0, p1 in phrases:
        inside = (frame_t >= p0) & (frame_t < p1 + 0.1)
        slope = rng.uniform(0.04, 0.10)
        contour[inside] += slope * (
            0.5 - (frame_t[inside] - p0) / max(p1 - p0, 1e-3)
        )
    for syl in syllables:
        if syl["stressed"]:
            centre = 0.5 * (syl["vowel_start"] + syl["end"])
            height = voice["intonation"] * rng.uniform(0.6, 1.4)
            contour += height * np.exp(-0.5 * ((frame_t - centre) / 0.07) ** 2)
    drift = np.convolve(
        rng.standard_normal(n_frames + 14), np.ones(15) / 15, mode="valid"
    )
    contour += 0.04 * drift
    f0_frames = voice["f0_hz"] * rng.uniform(0.97, 1.03) * np.exp(contour)
    t = np.arange(n_samples) / sr
    f0 = np.interp(t, frame_t, f0_frames)
    jitter_t = np.arange(0, total + 0.004, 0.004)
    f0 *= 1.0 + 0.004 * np.interp(
        t, jitter_t, rng.standard_normal(len(jitter_t))
    )

    # Rosenberg glottal flow; its derivative (lip radiation) is the source.
    oq, sq = voice["open_quotient"], voice["speed_quotient"]
    rise, fall = oq * sq / (1 + sq), oq / (1 + sq)
    frac = (rng.random() + np.cumsum(f0) / sr) % 1.0
    flow = np.zeros(n_samples)
    opening = frac < rise
    flow[opening] = 0.5 - 0.5 * np.cos(np.pi * frac[opening] / rise)
    closing = (frac >= rise) & (frac < rise + fall)
    flow[closing] = np.cos(0.5 * np.pi * (frac[closing] - rise) / fall)
    source = np.diff(flow, prepend=0.0)
    source /= np.std(source) + 1e-12
    aspiration = rng.standard_normal(n_samples, dtype=np.float32) * (
        0.3 + 0.7 * (flow > 0.05)
    )
    excitation = voiced * (source + voice["breathiness"] * aspiration)

    # Vocal-tract response per frame: F1-F3 move, F4 and F5 are fixed.
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr).astype(np.float32)
    fixed = 10 ** (
        voice["spectral_tilt_db"]
        * np.log2(np.maximum(freqs, 62.5) / 500.0)
        / 20
    )
    for f, b in zip(HIGHER_FORMANTS, bandwidths[3:]):
        fixed = fixed * _resonance_gain(freqs, f * scale, b)
    gains = np.broadcast_to(fixed.astype(np.float32), (n_frames, len(freqs)))
    for k in range(3):
        track = np.interp(frame_t, at[:, 0], at[:, k + 1]) * scale
        gains = gains * _resonance_gain(
            freqs, track[:, None].astype(np.float32), bandwidths[k]
        )
    speech = _filter_by_frames(excitation, gains)
    active = voiced > 0.5
    level = np.sqrt(np.mean(speech[active] ** 2)) if active.any() else 1.0
    speech /= level + 1e-12

    # Fricatives and bursts: band-passed noise, added after the tract filter.
    nyquist = 0.5 * sr
    warmup = 4 * ms  # lets the filter settle before the segment starts
    for i0, i1, name in noise_spans:
        if i1 <= i0:
            continue
        (lo, hi), rel = FRICATIVES[name]
        sos = _butter(
            4, (min(lo, 0.8 * nyquist), min(hi, 0.95 * nyquist)), "bandpass", sr
        )
        noise = sps.sosfilt(sos, rng.standard_normal(i1 - i0 + warmup))[warmup:]
        noise /= np.sqrt(np.mean(noise**2)) + 1e-12
        fade = (1, 3) if name == "burst" else (15, 10)
        speech[i0:i1] += (
            rel * _envelope(i1 - i0, fade[0] * ms, fade[1] * ms) * noise
        )
    return speech


def _coloured_noise(n, exponent, rng):
    """Gaussian noise with a 1/f**exponent power spectrum, unit RMS.

    Drawn directly as a random spectrum (one inverse FFT).
    """
    n_fft = scipy.fft.next_fast_len(n, real=True)
    n_bins = n_fft // 2 + 1
    spec = rng.standard_normal(n_bins) + 1j * rng.standard_normal(n_bins)
    spec /= np.maximum(np.arange(n_bins), 1.0) ** (exponent / 2.0)
    spec[0] = 0.0
    x = np.fft.irfft(spec, n=n_fft)[:n]
    return x / (np.std(x) + 1e-12)


@functools.lru_cache(maxsize=None)
def _butter(order, band, btype, sr):
    """Cached Butterworth design (second-order sections)."""
    return sps.butter(order, band, btype=btype, fs=sr, output="sos")


def _draw_channel(seed, gid, session, sr):
    """Audio channel of one session (fixed for all its utterances)."""
    rng = _rng(seed, "session", gid, session)
    nyquist = 0.5 * sr
    return {
        "eq_centres": np.exp(
            rng.uniform(np.log(200.0), np.log(min(6000.0, 0.8 * nyquist)), 3)
        ),
        "eq_gains_db": np.clip(rng.normal(0.0, 4.0, 3), -8.0, 8.0),
        "eq_widths": rng.uniform(0.4, 1.5, 3),
        "highpass": float(rng.uniform(60.0, 250.0)),
        "lowpass": float(min(rng.uniform(3400.0, 7600.0), 0.95 * nyquist)),
        "gain_db": float(rng.uniform(-10.0, 0.0)),
        "reverb": bool(rng.random() < 0.35),
        "rt60": float(rng.uniform(0.15, 0.5)),
        "drr_db": float(rng.uniform(0.0, 8.0)),
        "rir_seed": int(rng.integers(2**31)),
        "snr_db": float(rng.uniform(25.0, 40.0)),
        "noise_exponent": float(rng.uniform(0.5, 2.0)),
        "f0_shift": float(np.exp(_truncnorm(rng, 0.03))),
    }


def _apply_channel(x, channel, rng, sr):
    """EQ, band edges, reverberation, level and background noise."""
    n = len(x)
    n_fft = scipy.fft.next_fast_len(n + sr // 8)
    f = np.fft.rfftfreq(n_fft, 1.0 / sr)
    logf = np.log2(np.maximum(f, 1.0))
    gain_db = np.zeros_like(f)
    for c, g, w in zip(
        channel["eq_centres"], channel["eq_gains_db"], channel["eq_widths"]
    ):
        gain_db += g * np.exp(-0.5 * ((logf - np.log2(c)) / w) ** 2)
    response = 10 ** (gain_db / 20)
    response /= np.sqrt(1 + (channel["highpass"] / np.maximum(f, 1.0)) ** 4)
    response /= np.sqrt(1 + (f / channel["lowpass"]) ** 8)
    y = np.fft.irfft(np.fft.rfft(x, n=n_fft) * response, n=n_fft)[:n]
    if channel["reverb"]:
        room = np.random.default_rng(channel["rir_seed"])
        length = int(channel["rt60"] * sr)
        tail = room.standard_normal(length) * np.exp(
            -6.908 * np.arange(length) / length
        )
        tail[: int(0.003 * sr)] = 0.0
        tail *= 10 ** (-channel["drr_db"] / 20) / (
            np.sqrt(np.sum(tail**2)) + 1e-12
        )
        tail[0] = 1.0
        y = sps.fftconvolve(y, tail)[:n]
    y *= (
        0.08
        * 10 ** (channel["gain_db"] / 20)
        / (np.sqrt(np.mean(y**2)) + 1e-12)
    )
    speech_rms = np.sqrt(np.mean(y**2))
    noise = _coloured_noise(n, channel["noise_exponent"], rng)
    return y + noise * speech_rms * 10 ** (-channel["snr_db"] / 20)


def _to_pcm16(x):
    """Int16 samples, scaled down when the peak would clip."""
    peak = np.max(np.abs(x)) if len(x) else 0.0
    if peak > 0.98:
        x = x * (0.98 / peak)
    return np.round(x * 32767).astype(np.int16)


def utterance_length(seed, gid, session, utt, utt_duration, sample_rate):
    """Number of samples of one utterance (the first draw of its stream)."""
    rng = _rng(seed, "utterance", gid, session, utt)
    return int(round(rng.uniform(*utt_duration) * sample_rate))


def _render_utterance(task):
    """Samples (int16) of one corpus utterance; ``task`` is a dict."""
    seed, gid, s, u = task["seed"], task["gid"], task["session"], task["utt"]
    sr = task["sample_rate"]
    rng = _rng(seed, "utterance", gid, s, u)
    n = int(round(rng.uniform(*task["utt_duration"]) * sr))
    channel = _draw_channel(seed, gid, s, sr)
    voice = dict(task["identity"])
    voice["f0_hz"] = voice["f0_hz"] * channel["f0_shift"]
    x = synthesize_speech(voice, n, rng, sr)
    y = _apply_channel(x, channel, rng, sr)
    if task["low_quality"]:
        pool = _noise_pool(seed, sr)
        noise = pool[NOISE_TYPES[rng.integers(len(NOISE_TYPES))]]
        start = int(rng.integers(len(noise)))
        noise = np.roll(noise, -start)
        noise = np.tile(noise, n // len(noise) + 1)[:n]
        snr_db = rng.uniform(0.0, 6.0)
        y_rms = np.sqrt(np.mean(y**2))
        y = y + noise / (np.sqrt(np.mean(noise**2)) + 1e-12) * y_rms * 10 ** (
            -snr_db / 20
        )
    return _to_pcm16(y)


# --------------------------------------------------------------------------
# Noise recordings
# --------------------------------------------------------------------------


def _random_voice(rng):
    """A talker that is not one of the corpus identities (for babble)."""
    return draw_identity(rng, int(rng.integers(2)))


def synthesize_noise(kind, n_samples, rng, sample_rate=16000):
    """One noise recording: ``babble``, ``music`` or ``stationary``.

    Arguments
    ---------
    kind : str
        One of ``NOISE_TYPES``.
    n_samples : int
        Length of the output.
    rng : numpy.random.Generator
        Source of randomness.
    sample_rate : int
        Sampling rate in Hz.

    Returns
    -------
    numpy.ndarray
        Float signal with RMS 0.05.

    Example
    -------
    >>> x = synthesize_noise("music", 8000, np.random.default_rng(0))
    >>> round(float(np.sqrt(np.mean(x ** 2))), 3)
    0.05
    """
    sr = sample_rate
    n = n_samples
    if kind == "babble":
        x = np.zeros(n)
        for _ in range(int(rng.integers(6, 10))):
            talker = _random_voice(rng)
            speech = synthesize_speech(talker, n, rng, sr) * 10 ** (
                rng.uniform(-3, 3) / 20
            )
            x += np.roll(
                speech, int(rng.integers(n))
            )  # pauses fall at different times
    elif kind == "music":
        x = np.zeros(n)
        t = np.arange(n) / sr
        beat = 60.0 / rng.uniform(80, 140)
        root = 110.0 * 2 ** (rng.integers(12) / 12)
        scale = np.array([0, 2, 4, 7, 9, 12, 14, 16])  # pentatonic
        # Sustained pad: a chord changing every two bars, never silent.
        bar = 8 * beat
        for k in range(int(np.ceil(n / sr / bar))):
            i0, i1 = int(k * bar * sr), min(int((k + 1) * bar * sr), n)
            tt = t[i0:i1] - t[i0]
            chord = root * 2 ** (
                scale[rng.choice(len(scale), 3, replace=False)] / 12
            )
            pad = sum(
                np.sin(2 * np.pi * f * h * tt) / h**2
                for f in chord
                for h in (1, 2, 3)
            )
            x[i0:i1] += 0.25 * pad * _envelope(i1 - i0, sr // 10, sr // 10)
        for voice, (octave, notes_per_beat, level) in enumerate(
            [(0, 1, 0.7), (1, 2, 0.5), (2, 4, 0.35)]
        ):
            step = beat / notes_per_beat
            n_harm = int(rng.integers(3, 8))
            for k in range(int(np.ceil(n / sr / step))):
                i0 = int(k * step * sr)
                i1 = min(int((k + rng.uniform(0.6, 1.0)) * step * sr), n)
                if i1 <= i0:
                    continue
                f = (
                    root
                    * 2**octave
                    * 2 ** (scale[rng.integers(len(scale))] / 12)
                )
                tt = t[i0:i1] - t[i0]
                env = np.exp(-tt * rng.uniform(2, 8)) * _envelope(
                    i1 - i0, sr // 200, sr // 100
                )
                tone = sum(
                    np.sin(
                        2
                        * np.pi
                        * f
                        * h
                        * tt
                        * (1 + 0.003 * np.sin(2 * np.pi * 5 * tt))
                    )
                    / h**1.5
                    for h in range(1, n_harm + 1)
                    if f * h < 0.45 * sr
                )
                x[i0:i1] += level * env * tone
        hat_sos = _butter(4, min(6000.0, 0.4 * sr), "highpass", sr)
        for k in range(int(np.ceil(n / sr / beat))):
            i0 = int(k * beat * sr)
            i1 = min(i0 + int(0.25 * sr), n)
            if i1 <= i0:
                continue
            tt = t[i0:i1] - t[i0]
            x[i0:i1] += (
                0.8
                * np.sin(2 * np.pi * (50 + 80 * np.exp(-tt * 30)) * tt)
                * np.exp(-tt * 12)
            )
            j0 = min(i0 + int(0.5 * beat * sr), n)
            j1 = min(j0 + sr // 20, n)
            if j1 > j0:
                hat = sps.sosfilt(hat_sos, rng.standard_normal(j1 - j0))
                x[j0:j1] += (
                    0.3 * hat * np.exp(-np.arange(j1 - j0) / (0.01 * sr))
                )
    elif kind == "stationary":
        x = _coloured_noise(n, rng.uniform(0.3, 2.0), rng)
        n_fft = scipy.fft.next_fast_len(n, real=True)
        f = np.fft.rfftfreq(n_fft, 1.0 / sr)
        spec = np.fft.rfft(x, n=n_fft)
        for _ in range(3):  # fan / ventilation resonances
            c, w = rng.uniform(100, 3000), rng.uniform(20, 300)
            spec *= 1 + rng.uniform(1, 6) * np.exp(-0.5 * ((f - c) / w) ** 2)
        x = np.fft.irfft(spec, n=n_fft)[:n]
        if rng.random() < 0.5:  # mains hum
            hum = rng.choice([50.0, 60.0])
            t = np.arange(n) / sr
            x += (
                sum(np.sin(2 * np.pi * hum * h * t) / h for h in range(1, 6))
                * 0.3
                * np.std(x)
            )
    else:
        raise ValueError(
            f"noise kind must be one of {NOISE_TYPES}, got {kind!r}"
        )
    return 0.05 * x / (np.sqrt(np.mean(x**2)) + 1e-12)


_NOISE_POOL = {}


def _noise_pool(seed, sr):
    """Noises used to degrade low-quality utterances (not those in D/noise)."""
    key = (seed, sr)
    if key not in _NOISE_POOL:
        _NOISE_POOL[key] = {
            kind: synthesize_noise(
                kind, 8 * sr, _rng(seed, "noise_pool", i), sr
            )
            for i, kind in enumerate(NOISE_TYPES)
        }
    return _NOISE_POOL[key]


def _render_noise_file(task):
    rng = _rng(task["seed"], "noise_file", task["type_index"], task["index"])
    n = int(round(task["duration"] * task["sample_rate"]))
    x = synthesize_noise(task["noise_kind"], n, rng, task["sample_rate"])
    return _to_pcm16(x)


# --------------------------------------------------------------------------
# Faces
# --------------------------------------------------------------------------

_SCALE = 2  # drawing canvas = 2 x 112, for anti-aliased shapes
_PAD = 10  # margin (template px) around the canvas, so pose jitter never shows its border
_SHIFT = 4  # fixed-point bits for sub-pixel drawing


def _pts(xy):
    """Template coordinates -> fixed-point canvas polygon for cv2."""
    return [
        np.round((np.asarray(xy) + _PAD) * _SCALE * (1 << _SHIFT)).astype(
            np.int32
        )
    ]


def _fill(img, xy, colour):
    cv2.fillPoly(
        img, _pts(xy), tuple(float(c) for c in colour), cv2.LINE_AA, _SHIFT
    )


def _line(img, xy, colour, thickness):
    th = max(int(round(thickness * _SCALE)), 1)
    cv2.polylines(
        img,
        _pts(xy),
        False,
        tuple(float(c) for c in colour),
        th,
        cv2.LINE_AA,
        _SHIFT,
    )


def _ellipse(cx, cy, ax, ay, t0=0.0, t1=2 * np.pi, n=64):
    t = np.linspace(t0, t1, n)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], axis=1)


def _face_contour(ident):
    """Head outline: upper half-ellipse, cheeks, then a U-shaped jaw.

    Below the mouth corners the half-width follows a superellipse from
    ``jaw_half_width`` down to the chin; the squarer exponent of gender 0
    keeps the jaw wide for longer.
    """
    cx, top_cy = 56.0, 56.0
    cheek, jaw, chin_y = (
        ident["cheek_half_width"],
        ident["jaw_half_width"],
        ident["chin_y"],
    )
    upper = _ellipse(cx, top_cy, cheek, 52.0, np.pi, 2 * np.pi, 48)
    mouth_y = 92.0
    ys = np.linspace(top_cy, chin_y, 160)
    w = np.interp(ys, [top_cy, 76.0, mouth_y], [cheek, cheek - 1.0, jaw])
    q = 2.6 if ident["gender"] == 0 else 2.0
    low = ys > mouth_y
    u = (ys[low] - mouth_y) / (chin_y - mouth_y)
    w[low] = jaw * np.clip(1.0 - u**q, 0.0, 1.0) ** (1.0 / q)
    right = np.stack([cx + w, ys], axis=1)
    left = np.stack([cx - w[::-1], ys[::-1]], axis=1)
    return np.concatenate([upper, right, left])


def _hair_cap(ident, offset=0.0):
    """Hair over the top of the head down to the hairline."""
    cheek = ident["cheek_half_width"] + 3.0 + offset
    top = _ellipse(56.0, 56.0, cheek, 55.0 + offset, np.pi, 2 * np.pi, 48)
    hairline = ident["hairline_y"]
    inner = _ellipse(
        56.0, hairline + 10.0, cheek - 9.0, 10.0, 2 * np.pi, np.pi, 32
    )
    side_r = np.array([[56.0 + cheek, 50.0], [56.0 + cheek - 5.0, 48.0]])
    side_l = np.array([[56.0 - cheek + 5.0, 48.0], [56.0 - cheek, 50.0]])
    return np.concatenate([top, side_r, inner, side_l])


def render_face(ident, session_rng, low_quality_rng=None):
    """Draws one aligned 112x112 face of ``ident`` for one session.

    Arguments
    ---------
    ident : dict
        Identity attributes as returned by ``draw_identity``.
    session_rng : numpy.random.Generator
        Source of the session's lighting, pose, background and expression.
    low_quality_rng : numpy.random.Generator or None
        When given, the face is blurred and darkened.

    Returns
    -------
    numpy.ndarray
        ``uint8`` RGB image, ``[112, 112, 3]``.

    Example
    -------
    >>> ident = draw_identity(np.random.default_rng(0), gender=0)
    >>> render_face(ident, np.random.default_rng(1)).shape
    (112, 112, 3)
    """
    rng = session_rng
    size = (FACE_SIZE + 2 * _PAD) * _SCALE
    # Background: cool, desaturated colours with a gradient.
    base = rng.uniform(40, 200) * np.array(
        [rng.uniform(0.7, 1.0), rng.uniform(0.8, 1.05), 1.0]
    )
    grad = rng.uniform(-40, 40, size=3)
    ramp = np.linspace(-0.5, 0.5, size)[:, None, None]
    img = np.clip(base[None, None, :] + ramp * grad[None, None, :], 0, 255)
    img = np.repeat(img, size, axis=1).astype(np.float32)
    img = np.ascontiguousarray(img)

    t = ident["skin_tone"] * (len(SKIN_TONES) - 1)
    k = min(int(t), len(SKIN_TONES) - 2)
    skin = SKIN_TONES[k] * (1 - (t - k)) + SKIN_TONES[k + 1] * (t - k)
    hair = np.clip(
        np.array(HAIR_COLOURS[ident["hair_colour"]]) * ident["hair_shade"],
        0,
        255,
    )
    style = ident["hair_style"]
    hair_jitter = rng.uniform(-1.0, 1.0)

    # Back hair, neck, ears.
    cheek = ident["cheek_half_width"]
    if style == "long":
        back = np.concatenate(
            [
                _ellipse(
                    56.0,
                    56.0,
                    cheek + 6.0,
                    58.0 + hair_jitter,
                    np.pi,
                    2 * np.pi,
                    40,
                ),
                [[56.0 + cheek + 9.0, 125.0], [56.0 - cheek - 9.0, 125.0]],
            ]
        )
        _fill(img, back, hair * 0.9)
    neck_half = 17.0 if ident["gender"] == 0 else 14.0
    _fill(
        img,
        [
            [56 - neck_half, ident["chin_y"] - 12],
            [56 + neck_half, ident["chin_y"] - 12],
            [56 + neck_half + 6, 125],
            [56 - neck_half - 6, 125],
        ],
        skin * 0.62,
    )
    ear = ident["ear_size"]
    for side in (-1, 1):
        _fill(
            img,
            _ellipse(56.0 + side * (cheek - 1.0), 62.0, 4.5, ear),
            skin * 0.9,
        )
    contour = _face_contour(ident)
    _fill(img, contour, skin)
    # Shadow line along the jaw (the chin casts a shadow on the neck).
    jaw = contour[contour[:, 1] > 84.0]
    jaw = np.concatenate([jaw[jaw[:, 0] >= 56.0], jaw[jaw[:, 0] < 56.0]])
    _line(img, jaw, skin * 0.6, 1.0)

    # Hair on top.
    if style in ("short", "side_part", "curly", "long"):
        cap = _hair_cap(ident, hair_jitter)
        _fill(img, cap, hair)
        if style == "side_part":
            sign = 1 if ident["curl_phase"] > np.pi else -1
            swoop = [
                [56 - sign * 30, 22],
                [56 + sign * 4, ident["hairline_y"] - 2],
                [56 + sign * 30, ident["hairline_y"] + 12],
                [56 + sign * 34, 30],
            ]
            _fill(img, swoop, hair)
        if style == "curly":
            for a in np.linspace(np.pi * 1.05, np.pi * 1.95, 11):
                r = 52.0 + 2 * np.sin(3 * a + ident["curl_phase"])
                _fill(
                    img,
                    _ellipse(
                        56 + (cheek + 2) * np.cos(a),
                        56 + r * np.sin(a),
                        5.0,
                        5.0,
                        n=20,
                    ),
                    hair,
                )
    elif style == "buzz":
        cap = _hair_cap(ident, -1.5)
        _fill(img, cap, 0.55 * hair + 0.45 * skin)
    elif style == "bald":  # a fringe of hair above the ears only
        for side in (-1, 1):
            t = np.linspace(0.08, 0.45, 12)
            outer = np.stack(
                [56 + side * (cheek + 1.5) * np.cos(t), 56 - 53 * np.sin(t)], 1
            )
            inner = np.stack(
                [
                    56 + side * (cheek - 3.5) * np.cos(t[::-1]),
                    56 - 49 * np.sin(t[::-1]),
                ],
                1,
            )
            _fill(img, np.concatenate([outer, inner]), hair)

    # Brows (shared factors: thickness and height).
    brow_colour = hair * 0.7
    for (ex, ey), side in zip(ARCFACE_TEMPLATE[:2], (-1, 1)):
        by = ey - ident["brow_raise"]
        xs = np.linspace(ex - 9.0, ex + 9.0, 12)
        ys = by + 0.04 * (xs - ex) ** 2 - 1.5 + side * 0.0
        _line(
            img,
            np.stack([xs, ys], axis=1),
            brow_colour,
            ident["brow_thickness"],
        )

    # Eyes on the template landmarks.
    eye_colour = np.clip(
        np.array(EYE_COLOURS[ident["eye_colour"]]) * ident["eye_shade"], 0, 255
    )
    openness = rng.uniform(0.75, 1.1)
    glint = rng.uniform(-1.0, 1.0, size=2)
    for ex, ey in ARCFACE_TEMPLATE[:2]:
        _fill(img, _ellipse(ex, ey, 7.0, 3.4 * openness), (236, 232, 226))
        _fill(img, _ellipse(ex, ey, 3.0, min(3.0, 3.3 * openness)), eye_colour)
        _fill(img, _ellipse(ex, ey, 1.2, 1.2, n=16), (15, 12, 12))
        _fill(
            img,
            _ellipse(ex + glint[0], ey - 1.0 + 0.3 * glint[1], 0.6, 0.6, n=12),
            (250, 250, 250),
        )
        _line(
            img,
            _ellipse(ex, ey, 7.2, 3.6 * openness, np.pi, 2 * np.pi, 24),
            skin * 0.35,
            0.8,
        )

    # Nose (tip on the template landmark) and nostrils.
    nx, ny = ARCFACE_TEMPLATE[2]
    half = ident["nose_width"] / 2
    _line(img, [[nx - 2.5, 54.0], [nx - 3.5, ny - 2.0]], skin * 0.8, 0.9)
    _fill(img, _ellipse(nx, ny, half, 3.2), skin * 0.92)
    for side in (-1, 1):
        _fill(
            img,
            _ellipse(nx + side * half * 0.55, ny + 1.6, 1.5, 0.9, n=16),
            skin * 0.45,
        )

    # Mouth between the template corners.
    (lx, ly), (rx, ry) = ARCFACE_TEMPLATE[3], ARCFACE_TEMPLATE[4]
    xs = np.linspace(lx, rx, 24)
    u = (xs - lx) / (rx - lx)
    mid = ly + (ry - ly) * u
    opening = rng.uniform(0.0, 1.5)
    smile = rng.uniform(-0.8, 1.2)
    bow = np.sin(np.pi * u)
    upper = mid - ident["lip_thickness"] * 0.8 * bow + smile * (1 - bow) * 0.5
    lower = mid + (ident["lip_thickness"] + opening) * bow
    lips = skin * 0.75 + np.array([40.0, -5.0, -5.0])
    _fill(
        img,
        np.concatenate(
            [np.stack([xs, upper], 1), np.stack([xs[::-1], lower[::-1]], 1)]
        ),
        np.clip(lips, 0, 255),
    )
    if opening > 0.4:
        gap = np.concatenate(
            [
                np.stack([xs, mid], 1),
                np.stack([xs[::-1], (mid + opening * bow)[::-1]], 1),
            ]
        )
        _fill(img, gap, (40, 20, 20))
    _line(img, np.stack([xs, mid], 1), skin * 0.4, 0.6)

    # Age: forehead lines and nasolabial folds.
    if ident["wrinkle"] > 0:
        line_colour = skin * (1 - 0.35 * ident["wrinkle"])
        for y in (ident["hairline_y"] + 5.0, ident["hairline_y"] + 9.0):
            if y < 40:
                xs = np.linspace(42, 70, 10)
                _line(
                    img,
                    np.stack([xs, y + 0.02 * (xs - 56) ** 2 * 0.3], 1),
                    line_colour,
                    0.7,
                )
        for side in (-1, 1):
            _line(
                img,
                [
                    [nx + side * (half + 1.0), ny + 1.0],
                    [nx + side * (half + 4.0), 84.0],
                    [56 + side * 17.0, 90.0],
                ],
                line_colour,
                0.8,
            )
    if ident["mole"] is not None:
        _fill(img, _ellipse(*ident["mole"], 0.9, 0.9, n=16), skin * 0.4)

    # Lighting: directional gradient, brightness, colour temperature.
    angle = rng.uniform(0, 2 * np.pi)
    strength = rng.uniform(0.0, 0.35)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    light = 1 + strength * (np.cos(angle) * xx + np.sin(angle) * yy) * 2
    temperature = np.array(
        [1 + rng.uniform(-0.06, 0.06), 1.0, 1 + rng.uniform(-0.06, 0.06)]
    )
    img = img * (light[..., None] * rng.uniform(0.8, 1.15) * temperature)

    # Pose jitter (similarity transform) and downsampling to 112 x 112.
    rot = rng.uniform(-5.0, 5.0)
    scale = rng.uniform(0.95, 1.05)
    shift = rng.uniform(-2.0, 2.0, size=2) * _SCALE
    centre = (56.0 * _SCALE, 66.0 * _SCALE)
    m = cv2.getRotationMatrix2D(centre, rot, scale)
    m[:, 2] += shift - m[:, :2] @ np.array([_PAD * _SCALE, _PAD * _SCALE])
    out = FACE_SIZE * _SCALE
    img = cv2.warpAffine(
        img.astype(np.float32),
        m,
        (out, out),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    img = cv2.resize(img, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
    img = img + rng.normal(0.0, 1.5, img.shape)
    if low_quality_rng is not None:
        sigma = low_quality_rng.uniform(1.6, 2.6)
        img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigma)
        dark = low_quality_rng.uniform(0.3, 0.5)
        img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** 1.3 * dark
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _render_face_task(task):
    rng = _rng(task["seed"], "session_face", task["gid"], task["session"])
    lq = (
        _rng(task["seed"], "quality", 2, task["gid"], task["session"])
        if task["low_quality"]
        else None
    )
    return render_face(task["identity"], rng, lq)


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def _wav_bytes(samples, sr):
    buf = io.BytesIO()
    sf.write(buf, samples, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _wav_complete(path, n_samples, sr):
    try:
        info = sf.info(path)
    except (RuntimeError, sf.LibsndfileError):
        return False
    return (
        info.frames == n_samples
        and info.samplerate == sr
        and info.channels == 1
        and info.subtype == "PCM_16"
    )


def _png_complete(path):
    if not os.path.isfile(path):
        return False
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    return img is not None and img.shape == (FACE_SIZE, FACE_SIZE, 3)


def _run_task(task):
    """Renders one file and writes it atomically; returns its path."""
    if task["kind"] == "face":
        rgb = _render_face_task(task)
        ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        atomic_write_bytes(task["path"], png.tobytes())
    elif task["kind"] == "wav":
        atomic_write_bytes(
            task["path"],
            _wav_bytes(_render_utterance(task), task["sample_rate"]),
        )
    else:
        atomic_write_bytes(
            task["path"],
            _wav_bytes(_render_noise_file(task), task["sample_rate"]),
        )
    return task["path"]


def _csv_text(rows, header=CSV_HEADER):
    return csv_text(rows, header)


def _get_chunks(seg_dur, audio_id, audio_duration):
    """Chunk IDs exactly as SpeechBrain's voxceleb_prepare names them."""
    num_chunks = int(audio_duration / seg_dur)
    return [
        audio_id + "_" + str(i * seg_dur) + "_" + str(i * seg_dur + seg_dur)
        for i in range(num_chunks)
    ]


def _validate(args):
    """Raises ValueError naming the first bad argument."""

    def integer(name, low):
        value = args[name]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, np.integer))
            or value < low
        ):
            raise ValueError(
                f"{name} must be an integer >= {low}, got {value!r}"
            )

    def number(name, low, high, low_open=False):
        value = args[name]
        ok = isinstance(value, (int, float, np.number)) and not isinstance(
            value, bool
        )
        ok = (
            ok
            and np.isfinite(value)
            and (value > low if low_open else value >= low)
            and value <= high
        )
        if not ok:
            bracket = "(" if low_open else "["
            raise ValueError(
                f"{name} must be a number in {bracket}{low}, {high}], got {value!r}"
            )

    for name in ("data_folder", "save_folder"):
        if not isinstance(args[name], (str, os.PathLike)) or not str(
            args[name]
        ):
            raise ValueError(
                f"{name} must be a non-empty path, got {args[name]!r}"
            )
    integer("seed", 0)
    integer("n_train_speakers", 1)
    integer("n_test_speakers", 2)
    integer("sessions_per_speaker", 1)
    integer("utts_per_session", 1)
    integer("max_trials", 2)
    integer("n_noise_files", 0)
    integer("n_jobs", 1)
    integer("sample_rate", 8000)
    if args["sample_rate"] > 48000:
        raise ValueError(
            f"sample_rate must be between 8000 and 48000, got {args['sample_rate']}"
        )
    if args["n_train_speakers"] + args["n_test_speakers"] > 9000:
        raise ValueError(
            "n_train_speakers + n_test_speakers must be at most 9000 (ids id90001-id99999), "
            f"got {args['n_train_speakers'] + args['n_test_speakers']}"
        )
    if args["sessions_per_speaker"] * args["utts_per_session"] < 2:
        raise ValueError(
            "sessions_per_speaker * utts_per_session must be >= 2 so that test identities "
            f"have target trials, got {args['sessions_per_speaker']} * {args['utts_per_session']}"
        )
    dur = args["utt_duration"]
    if (
        not isinstance(dur, (tuple, list))
        or len(dur) != 2
        or not all(
            isinstance(d, (int, float)) and not isinstance(d, bool) for d in dur
        )
        or not 1.0 <= dur[0] <= dur[1] <= 60.0
    ):
        raise ValueError(
            f"utt_duration must be (min, max) seconds with 1 <= min <= max <= 60, got {dur!r}"
        )
    number("low_quality_share", 0.0, 1.0)
    number("seg_dur", 0.0, 60.0, low_open=True)
    number("amp_th", 0.0, 1.0)
    number("noise_duration", 1.0, 600.0)
    ratio = args["split_ratio"]
    if (
        not isinstance(ratio, (tuple, list))
        or len(ratio) != 2
        or not all(isinstance(r, (int, float)) and r >= 0 for r in ratio)
        or abs(sum(ratio) - 100) > 1e-6
        or ratio[0] <= 0
    ):
        raise ValueError(
            f"split_ratio must be [train, dev] percentages summing to 100, got {ratio!r}"
        )
    if not args["random_segment"] and dur[1] < args["seg_dur"]:
        raise ValueError(
            f"seg_dur ({args['seg_dur']} s) is longer than every utterance (utt_duration max "
            f"{dur[1]} s): no segment would be written; lower seg_dur or use random_segment=True"
        )


def _check_params_file(path, params):
    """Refuses to mix files of different generation parameters in one folder."""
    text = json.dumps(params, indent=2, sort_keys=True) + "\n"
    new = json.loads(text)  # same types as what json.load returns
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            try:
                old = json.load(f)
            except json.JSONDecodeError:
                old = None  # a half-written file: rewritten below
        if isinstance(old, dict) and old != new:
            diff = sorted(
                k for k in set(old) | set(new) if old.get(k) != new.get(k)
            )
            raise ValueError(
                f"data_folder {os.path.dirname(path)!r} holds a synthetic corpus generated with "
                f"different parameters ({', '.join(diff)}); use another data_folder or delete it"
            )
    write_if_changed(path, text)


def _fmt(x):
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def prepare_synthetic(
    data_folder,
    save_folder,
    seed=1234,
    n_train_speakers=40,
    n_test_speakers=10,
    sessions_per_speaker=4,
    utts_per_session=3,
    utt_duration=(3.0, 6.0),
    low_quality_share=0.15,
    sample_rate=16000,
    split_ratio=(90, 10),
    seg_dur=3.0,
    amp_th=5e-4,
    random_segment=False,
    max_trials=2000,
    n_noise_files=2,
    noise_duration=12.0,
    n_jobs=1,
):
    """Generates (or completes) the synthetic audio-visual corpus and its csv files.

    Files that already exist and are complete are kept, so an interrupted run
    continues where it stopped and a repeated run changes nothing.

    Arguments
    ---------
    data_folder : str
        Where the corpus is written (``wav/``, ``faces/``, ``noise/``,
        trial list, ``meta.csv``).
    save_folder : str
        Where ``train.csv``, ``dev.csv``, ``enrol.csv``, ``test.csv``,
        ``noise.csv`` and ``synthetic_report.json`` are written.
    seed : int
        Seed of every random draw; the same seed gives byte-identical files.
    n_train_speakers : int
        Identities in train.csv / dev.csv.
    n_test_speakers : int
        Identities of the trial list (disjoint from the training ones).
    sessions_per_speaker : int
        Videos per identity; one face image per video.
    utts_per_session : int
        Utterances per video.
    utt_duration : tuple
        (min, max) utterance length in seconds, uniform.
    low_quality_share : float
        Share of faces, and independently of utterances, that are degraded.
    sample_rate : int
        Audio sampling rate in Hz.
    split_ratio : tuple
        Train / dev percentages of the training utterances.
    seg_dur : float
        Length in seconds of the training segments (as SpeechBrain's prep).
    amp_th : float
        Segments with a lower mean absolute amplitude are dropped.
    random_segment : bool
        One row per file instead of fixed segments.
    max_trials : int
        Upper bound on the number of trials (half target, half non-target).
    n_noise_files : int
        Noise recordings per type in ``D/noise``.
    noise_duration : float
        Length of each noise recording in seconds.
    n_jobs : int
        Processes used to render files (the output does not depend on it).

    Returns
    -------
    dict
        The report written to ``synthetic_report.json``, plus
        ``files_written``: the files (relative to ``data_folder``) this call
        generated.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> report = prepare_synthetic(tmp / "data", tmp / "save", n_train_speakers=2,
    ...     n_test_speakers=2, sessions_per_speaker=1, utts_per_session=2,
    ...     utt_duration=(1.0, 1.2), seg_dur=1.0, n_noise_files=0)
    >>> report["counts"]["utterances"], report["counts"]["test_identities"]
    (8, 2)
    """
    args = dict(locals())
    _validate(args)
    data_folder, save_folder = str(data_folder), str(save_folder)
    utt_duration = tuple(float(d) for d in utt_duration)
    sr = int(sample_rate)
    os.makedirs(data_folder, exist_ok=True)
    os.makedirs(save_folder, exist_ok=True)
    data_params = {
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "n_train_speakers": int(n_train_speakers),
        "n_test_speakers": int(n_test_speakers),
        "sessions_per_speaker": int(sessions_per_speaker),
        "utts_per_session": int(utts_per_session),
        "utt_duration": list(utt_duration),
        "low_quality_share": float(low_quality_share),
        "sample_rate": sr,
        "max_trials": int(max_trials),
        "n_noise_files": int(n_noise_files),
        "noise_duration": float(noise_duration),
    }
    _check_params_file(
        os.path.join(data_folder, "synthetic_params.json"), data_params
    )

    remove_partial_files(data_folder)

    # Identities, sessions, utterances.
    train_ids, test_ids = _speaker_ids(n_train_speakers, n_test_speakers)
    identities = []
    for split, ids in (("train", train_ids), ("test", test_ids)):
        for gender, spk in zip(_balanced_genders(seed, split, len(ids)), ids):
            gid = len(identities)
            ident = draw_identity(_rng(seed, "identity", gid), gender)
            ident.update(
                spk_id=spk,
                split=split,
                gid=gid,
                sessions=_session_names(seed, gid, sessions_per_speaker),
            )
            identities.append(ident)
    sessions, utterances = [], []
    for ident in identities:
        for s, name in enumerate(ident["sessions"]):
            face = f"faces/{ident['spk_id']}/{name}.png"
            sessions.append((ident, s, face))
            for u in range(utts_per_session):
                wav = f"wav/{ident['spk_id']}/{name}/{u + 1:05d}.wav"
                n = utterance_length(seed, ident["gid"], s, u, utt_duration, sr)
                utterances.append(
                    {
                        "ident": ident,
                        "session": s,
                        "utt": u,
                        "wav": wav,
                        "face": face,
                        "n": n,
                    }
                )

    def pick_low_quality(kind, count):
        k = int(np.floor(low_quality_share * count + 0.5))
        return set(_rng(seed, "quality", kind).permutation(count)[:k].tolist())

    lq_faces = pick_low_quality(0, len(sessions))
    lq_wavs = pick_low_quality(1, len(utterances))

    # Render whatever is missing.
    def public(ident):
        return {
            k: v
            for k, v in ident.items()
            if k not in ("sessions", "split", "spk_id")
        }

    tasks = []
    for i, (ident, s, face) in enumerate(sessions):
        path = os.path.join(data_folder, face)
        if not _png_complete(path):
            tasks.append(
                {
                    "kind": "face",
                    "path": path,
                    "seed": seed,
                    "gid": ident["gid"],
                    "session": s,
                    "identity": public(ident),
                    "low_quality": i in lq_faces,
                }
            )
    for i, utt in enumerate(utterances):
        path = os.path.join(data_folder, utt["wav"])
        if not _wav_complete(path, utt["n"], sr):
            tasks.append(
                {
                    "kind": "wav",
                    "path": path,
                    "seed": seed,
                    "gid": utt["ident"]["gid"],
                    "session": utt["session"],
                    "utt": utt["utt"],
                    "sample_rate": sr,
                    "utt_duration": utt_duration,
                    "identity": public(utt["ident"]),
                    "low_quality": i in lq_wavs,
                }
            )
    noise_files = []
    n_noise = int(round(noise_duration * sr))
    for t, kind in enumerate(NOISE_TYPES):
        for j in range(n_noise_files):
            rel = f"noise/{kind}_{j + 1:02d}.wav"
            noise_files.append((rel, kind))
            path = os.path.join(data_folder, rel)
            if not _wav_complete(path, n_noise, sr):
                tasks.append(
                    {
                        "kind": "noise",
                        "path": path,
                        "seed": seed,
                        "type_index": t,
                        "index": j,
                        "noise_kind": kind,
                        "duration": noise_duration,
                        "sample_rate": sr,
                    }
                )
    logger.info(
        "Synthetic corpus in %s: %d files to generate", data_folder, len(tasks)
    )
    written = _render_all(tasks, n_jobs)
    files_written = sorted(os.path.relpath(p, data_folder) for p in written)

    # Text files in the data folder.
    meta_rows = [
        [
            (
                _fmt(ident[c])
                if c != "mole"
                else (
                    ""
                    if ident["mole"] is None
                    else f"{ident['mole'][0]:.2f} {ident['mole'][1]:.2f}"
                )
            )
            for c in META_COLUMNS
        ]
        for ident in identities
    ]
    lq_face_list = sorted(sessions[i][2] for i in lq_faces)
    lq_wav_list = sorted(utterances[i]["wav"] for i in lq_wavs)
    trials = _make_trials(
        seed,
        [u for u in utterances if u["ident"]["split"] == "test"],
        max_trials,
    )
    text_files = {
        "meta.csv": _csv_text(meta_rows, META_COLUMNS),
        "low_quality_faces.txt": "".join(p + "\n" for p in lq_face_list),
        "low_quality_wavs.txt": "".join(p + "\n" for p in lq_wav_list),
        TRIAL_FILE: "".join(f"{lab} {a} {b}\n" for lab, a, b in trials),
    }
    for name, text in text_files.items():
        if write_if_changed(os.path.join(data_folder, name), text):
            files_written.append(name)

    # CSV files, computed from the wav files as the real prep does.
    train_utts = [u for u in utterances if u["ident"]["split"] == "train"]
    train_part, dev_part = _split_utterances(seed, train_utts, split_ratio)
    csv_rows = {
        "train": _segment_rows(
            data_folder, train_part, seg_dur, amp_th, random_segment, sr
        ),
        "dev": _segment_rows(
            data_folder, dev_part, seg_dur, amp_th, random_segment, sr
        ),
    }
    by_key = {u["wav"][len("wav/") : -len(".wav")]: u for u in utterances}
    for name, column in (("enrol", 1), ("test", 2)):
        keys = sorted({trial[column][: -len(".wav")] for trial in trials})
        csv_rows[name] = [
            [
                key,
                str(by_key[key]["n"] / sr),
                f"{DATA_ROOT}/{by_key[key]['wav']}",
                0,
                by_key[key]["n"],
                key.split("/")[0],
                f"{DATA_ROOT}/{by_key[key]['face']}",
            ]
            for key in keys
        ]
    for name, rows in csv_rows.items():
        write_if_changed(
            os.path.join(save_folder, f"{name}.csv"), _csv_text(rows)
        )
    noise_rows = [
        [
            os.path.splitext(os.path.basename(rel))[0],
            str(n_noise / sr),
            f"{DATA_ROOT}/{rel}",
            kind,
        ]
        for rel, kind in noise_files
    ]
    write_if_changed(
        os.path.join(save_folder, "noise.csv"),
        _csv_text(noise_rows, ["ID", "duration", "wav", "noise_type"]),
    )

    n_target = sum(1 for t in trials if t[0] == 1)
    report = {
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "parameters": {
            **data_params,
            "split_ratio": list(split_ratio),
            "seg_dur": float(seg_dur),
            "amp_th": float(amp_th),
            "random_segment": bool(random_segment),
        },
        "path_convention": f"csv paths start with {DATA_ROOT}; pass "
        "replacements={'data_root': data_folder}",
        "counts": {
            "train_identities": len(train_ids),
            "test_identities": len(test_ids),
            "sessions": len(sessions),
            "faces": len(sessions),
            "utterances": len(utterances),
            "train_utterances": len(train_part),
            "dev_utterances": len(dev_part),
            **{f"{name}_rows": len(rows) for name, rows in csv_rows.items()},
            "trials": len(trials),
            "target_trials": n_target,
            "nontarget_trials": len(trials) - n_target,
            "noise_files": len(noise_files),
            "low_quality_faces": len(lq_face_list),
            "low_quality_wavs": len(lq_wav_list),
        },
        "low_quality": {"faces": lq_face_list, "wavs": lq_wav_list},
        "trial_list": TRIAL_FILE,
        "shared_attributes": ["gender", "age"],
        "face_only_attributes": [
            "skin_tone",
            "hair_colour",
            "hair_style",
            "hairline_y",
            "eye_colour",
            "nose_width",
            "lip_thickness",
            "ear_size",
            "mole",
        ],
        "voice_only_attributes": [
            "spectral_tilt_db",
            "open_quotient",
            "speed_quotient",
            "breathiness",
            "bandwidth_scale",
            "speaking_rate",
            "intonation",
            "accent",
        ],
    }
    write_if_changed(
        os.path.join(save_folder, "synthetic_report.json"),
        json.dumps(report, indent=2) + "\n",
    )
    logger.info("Synthetic corpus ready: %s", json.dumps(report["counts"]))
    return {**report, "files_written": files_written}


def _render_all(tasks, n_jobs):
    if n_jobs == 1 or len(tasks) < 2:
        return [_run_task(t) for t in tasks]
    # Longest first keeps the processes busy until the end.
    order = sorted(tasks, key=lambda t: 0 if t["kind"] == "noise" else 1)
    # spawn: safe even when the caller has started threads (torch, DDP).
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=context) as pool:
        return list(pool.map(_run_task, order, chunksize=4))


def _split_utterances(seed, utts, split_ratio):
    """Seeded 90/10 split by utterance that leaves every speaker in train.

    A speaker absent from train.csv would break the label encoder of the
    dev set, so a dev pick that would take a speaker's last training
    utterance is skipped.
    """
    n_train = int(0.01 * split_ratio[0] * len(utts))
    n_dev = len(utts) - n_train
    left = {}
    for u in utts:
        left[u["ident"]["spk_id"]] = left.get(u["ident"]["spk_id"], 0) + 1
    dev = set()
    for i in _rng(seed, "split", 0).permutation(len(utts)).tolist():
        if len(dev) == n_dev:
            break
        spk = utts[i]["ident"]["spk_id"]
        if left[spk] > 1:
            dev.add(i)
            left[spk] -= 1
    train_part = [u for i, u in enumerate(utts) if i not in dev]
    dev_part = [u for i, u in enumerate(utts) if i in dev]
    return train_part, dev_part


def _segment_rows(data_folder, utts, seg_dur, amp_th, random_segment, sr):
    """train/dev rows, as SpeechBrain's prepare_csv (plus the face column)."""
    rows = []
    for u in sorted(utts, key=lambda u: u["wav"]):
        spk_id, sess_id, utt_id = u["wav"].split("/")[-3:]
        audio_id = "--".join([spk_id, sess_id, utt_id.split(".")[0]])
        signal, _ = sf.read(
            os.path.join(data_folder, u["wav"]), dtype="float32"
        )
        audio_duration = signal.shape[0] / sr
        wav, face = f"{DATA_ROOT}/{u['wav']}", f"{DATA_ROOT}/{u['face']}"
        if random_segment:
            rows.append(
                [
                    audio_id,
                    str(audio_duration),
                    wav,
                    0,
                    signal.shape[0],
                    spk_id,
                    face,
                ]
            )
            continue
        for chunk in _get_chunks(seg_dur, audio_id, audio_duration):
            s, e = chunk.split("_")[-2:]
            start, stop = int(float(s) * sr), int(float(e) * sr)
            if np.mean(np.abs(signal[start:stop])) < amp_th:
                continue
            rows.append(
                [chunk, str(audio_duration), wav, start, stop, spk_id, face]
            )
    return rows


def _make_trials(seed, test_utts, max_trials):
    """Balanced (label, enrol, test) trials among the test utterances."""
    rng = _rng(seed, "trials", 0)
    paths = [u["wav"][len("wav/") :] for u in test_utts]
    spk = np.array([u["ident"]["gid"] for u in test_utts])
    sess = np.array([u["session"] for u in test_utts])
    i, j = np.triu_indices(len(test_utts), k=1)
    same = spk[i] == spk[j]
    multi_session = len(set(sess.tolist())) > 1
    target = same & (sess[i] != sess[j]) if multi_session else same
    nontarget = ~same
    t_idx, n_idx = np.flatnonzero(target), np.flatnonzero(nontarget)
    n_each = min(len(t_idx), len(n_idx), max_trials // 2)
    chosen = [(1, k) for k in np.sort(rng.choice(t_idx, n_each, replace=False))]
    chosen += [
        (0, k) for k in np.sort(rng.choice(n_idx, n_each, replace=False))
    ]
    flips = rng.random(len(chosen)) < 0.5
    trials = []
    for (label, k), flip in zip(chosen, flips):
        a, b = paths[i[k]], paths[j[k]]
        trials.append((label, b, a) if flip else (label, a, b))
    order = rng.permutation(len(trials))
    return [trials[k] for k in order]


def main(argv=None):
    """Command-line entry point (see ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data_folder", required=True, help="where the corpus is written"
    )
    parser.add_argument(
        "--save_folder", required=True, help="where the csv files are written"
    )
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--n_train_speakers", type=int, default=40)
    parser.add_argument("--n_test_speakers", type=int, default=10)
    parser.add_argument("--sessions_per_speaker", type=int, default=4)
    parser.add_argument("--utts_per_session", type=int, default=3)
    parser.add_argument(
        "--utt_duration",
        type=float,
        nargs=2,
        default=(3.0, 6.0),
        metavar=("MIN", "MAX"),
    )
    parser.add_argument("--low_quality_share", type=float, default=0.15)
    parser.add_argument("--sample_rate", type=int, default=16000)
    parser.add_argument(
        "--split_ratio",
        type=float,
        nargs=2,
        default=(90, 10),
        metavar=("TRAIN", "DEV"),
    )
    parser.add_argument("--seg_dur", type=float, default=3.0)
    parser.add_argument("--amp_th", type=float, default=5e-4)
    parser.add_argument("--random_segment", action="store_true")
    parser.add_argument("--max_trials", type=int, default=2000)
    parser.add_argument("--n_noise_files", type=int, default=2)
    parser.add_argument("--noise_duration", type=float, default=12.0)
    parser.add_argument("--n_jobs", type=int, default=1)
    opts = vars(parser.parse_args(argv))
    opts["utt_duration"] = tuple(opts["utt_duration"])
    opts["split_ratio"] = tuple(opts["split_ratio"])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = prepare_synthetic(**opts)
    except ValueError as err:
        parser.error(str(err))
    print(json.dumps(report["counts"], indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
