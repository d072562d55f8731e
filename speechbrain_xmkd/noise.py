"""Test-time noise for the robustness columns of Table 1 (Eq. 13).

The paper mixes "a segment of noise" from MUSAN into each test utterance at
a level set by ``delta_db = db_audio - db_noise`` (Eq. 13): a larger
``delta_db`` means quieter noise. We read ``db`` as the mean power of the
whole signal in dB (``10 log10 mean(x^2)``), so ``delta_db`` is the
signal-to-noise ratio of the mixture. The prose also calls it "the
difference in decibels between the original speech and the distorted
speech"; we follow the equation.

To compare systems on the same test set, the noise segment of an utterance
depends only on the utterance's key (its path relative to the audio root)
and a seed: the same file and offset for every system, every run and every
``delta_db``.

Authors
 * speechbrain_xmkd contributors
"""

import hashlib
import logging
import math
import os

import numpy as np
import torch

from .audio import AudioError, audio_info, read_segment

logger = logging.getLogger(__name__)

__all__ = ["power_db", "mix_at_delta_db", "NoisePicker"]

NOISE_EXTENSIONS = (".wav", ".flac")


def power_db(signal):
    """Mean power of a signal in dB: ``10 log10(mean(x^2))``.

    Arguments
    ---------
    signal : torch.Tensor
        ``[samples]`` waveform.

    Returns
    -------
    float
        The level in dB (``-inf`` for an all-zero signal).

    Example
    -------
    >>> round(power_db(torch.ones(100) * 0.1), 3)
    -20.0
    """
    power = float(signal.double().pow(2).mean())
    return 10.0 * math.log10(power) if power > 0 else float("-inf")


def mix_at_delta_db(speech, noise, delta_db):
    """Adds ``noise`` to ``speech`` so that ``power_db(speech) - power_db(scaled noise) = delta_db`` (Eq. 13).

    Noise shorter than the speech is looped (repeated end to end); longer
    noise is cut to the speech length.

    Arguments
    ---------
    speech : torch.Tensor
        ``[samples]`` clean waveform (not silent).
    noise : torch.Tensor
        ``[noise_samples]`` noise waveform (not silent).
    delta_db : float
        Eq. 13's ``db_audio - db_noise``, e.g. 15, 10 or 5.

    Returns
    -------
    torch.Tensor
        ``[samples]`` mixture, in the speech's dtype.

    Raises
    ------
    ValueError
        If the speech or the noise is empty or silent.

    Example
    -------
    >>> speech = torch.sin(torch.arange(16000) * 0.05)
    >>> noisy = mix_at_delta_db(speech, torch.randn(4000), delta_db=10)
    >>> round(power_db(speech) - power_db(noisy - speech), 3)
    10.0
    """
    for name, value in (("speech", speech), ("noise", noise)):
        if value.numel() == 0:
            raise ValueError(f"mix_at_delta_db: the {name} is empty")
    speech_db, noise_db = power_db(speech), power_db(noise)
    if not np.isfinite(speech_db):
        raise ValueError("mix_at_delta_db: the speech is silent (all samples are zero)")
    if not np.isfinite(noise_db):
        raise ValueError("mix_at_delta_db: the noise is silent (all samples are zero)")
    length = speech.shape[0]
    if noise.shape[0] < length:
        noise = noise.repeat(-(-length // noise.shape[0]))
    noise = noise[:length].double()
    # The level of the segment actually added, so the mixture hits delta_db
    # exactly even when looping or cutting changed the noise's mean power.
    noise_db = power_db(noise)
    if not np.isfinite(noise_db):
        raise ValueError("mix_at_delta_db: the noise segment is silent (all samples are zero)")
    gain = 10.0 ** ((speech_db - delta_db - noise_db) / 20.0)
    return (speech.double() + gain * noise).to(speech.dtype)


class NoisePicker:
    """Deterministic noise segments from a folder of recordings (MUSAN or any).

    Every ``.wav`` / ``.flac`` file below ``folder`` (recursively, in sorted
    order) is a candidate. The segment for an utterance is chosen by a
    generator seeded with ``(seed, sha256(key))``: which file, and where in
    it to start; it wraps around to the file's beginning (loops) when the
    utterance is longer than what is left. Nothing depends on the order of
    calls, the process, or ``delta_db``.

    Arguments
    ---------
    folder : str
        Folder of noise recordings, e.g. ``musan/noise`` or the embedded
        corpus's ``noise/``.
    seed : int
        Changes every choice; keep it fixed to compare systems.
    sample_rate : int
        Expected rate of every noise file (no silent resampling).

    Example
    -------
    >>> import tempfile, soundfile
    >>> folder = tempfile.mkdtemp()
    >>> soundfile.write(os.path.join(folder, "hum.wav"), np.sin(np.arange(800) / 3.0), 16000)
    >>> picker = NoisePicker(folder, seed=7)
    >>> segment = picker.segment("id1/v/00001.wav", 2000)
    >>> segment.shape, bool(torch.equal(segment, picker.segment("id1/v/00001.wav", 2000)))
    (torch.Size([2000]), True)
    >>> speech = torch.sin(torch.arange(3000) * 0.01)
    >>> noisy = picker(speech, "id1/v/00001.wav", delta_db=5)
    >>> round(power_db(speech) - power_db(noisy - speech), 3)
    5.0
    """

    def __init__(self, folder, seed=0, sample_rate=16000):
        if folder is None or not os.path.isdir(folder):
            raise FileNotFoundError(
                f"noise folder '{folder}' does not exist: set noise_folder to MUSAN (e.g. "
                "/data/musan/noise) or any folder of noise wavs, or pass --noise_levels_db=[]"
            )
        self.folder = os.fspath(folder)
        self.seed = int(seed)
        self.sample_rate = int(sample_rate)
        files = []
        for root, dirs, names in os.walk(self.folder):
            dirs.sort()
            files += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(NOISE_EXTENSIONS)]
        if not files:
            raise FileNotFoundError(f"noise folder '{self.folder}' holds no .wav or .flac file")
        self.files = files
        self._frames = {}

    def signature(self):
        """Text identifying the noise set and seed (for cache keys)."""
        listing = hashlib.sha256()
        for path in self.files:
            listing.update(os.path.relpath(path, self.folder).encode())
            listing.update(str(os.path.getsize(path)).encode())
        return f"noise:{listing.hexdigest()[:16]}:seed{self.seed}:sr{self.sample_rate}"

    def _length(self, path):
        if path not in self._frames:
            frames, rate, _ = audio_info(path)
            if rate != self.sample_rate:
                raise AudioError(f"noise file '{path}' has sample rate {rate}, expected {self.sample_rate}")
            if frames == 0:
                raise AudioError(f"noise file '{path}' is empty (0 samples)")
            self._frames[path] = frames
        return self._frames[path]

    def choice(self, key):
        """``(file, start_sample)`` of the segment for an utterance key."""
        digest = hashlib.sha256(str(key).encode("utf-8")).digest()
        words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
        rng = np.random.default_rng([self.seed, *words])
        path = self.files[int(rng.integers(len(self.files)))]
        return path, int(rng.integers(self._length(path)))

    def segment(self, key, length):
        """The ``[length]`` noise segment for an utterance key (looped if needed)."""
        path, start = self.choice(key)
        frames = self._length(path)
        if frames < length:
            whole = read_segment(path, 0, None, self.sample_rate, where="noise")
            return whole[(start + torch.arange(length)) % frames]
        first = read_segment(path, start, min(frames, start + length), self.sample_rate, where="noise")
        if first.shape[0] == length:
            return first
        rest = read_segment(path, 0, length - first.shape[0], self.sample_rate, where="noise")
        return torch.cat([first, rest])

    def __call__(self, speech, key, delta_db):
        """``mix_at_delta_db(speech, segment(key, len(speech)), delta_db)``; errors name the noise file."""
        noise = self.segment(key, speech.shape[0])
        try:
            return mix_at_delta_db(speech, noise, delta_db)
        except ValueError as err:
            if "noise" in str(err):
                raise AudioError(f"{err}: noise file '{self.choice(key)[0]}'") from None
            raise
