"""Audio reading with errors that name the file: crops for training, whole files for tests.

SpeechBrain 1.1 reads audio through soundfile (``speechbrain.dataio.audio_io``);
``torchaudio.load`` needs torchcodec, which these machines lack, so nothing
here uses it.
"""

import numpy as np
import soundfile
import torch


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file."""


def audio_info(path):
    """Returns ``(num_frames, sample_rate, channels)`` of an audio file.

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> soundfile.write(path, np.zeros(1600, dtype="float32"), 16000)
    >>> audio_info(path)
    (1600, 16000, 1)
    """
    try:
        info = soundfile.info(str(path))
    except Exception as err:  # soundfile raises its own types; name the file
        raise AudioError(f"audio file '{path}' cannot be read: {err}") from None
    return info.frames, info.samplerate, info.channels


def read_segment(path, start=0, stop=None, sample_rate=16000, where=""):
    """Reads samples ``[start, stop)`` of a mono (or down-mixed) file.

    Arguments
    ---------
    path : str
        Audio file.
    start, stop : int
        Sample range; ``stop=None`` reads to the end.
    sample_rate : int
        Expected rate: any other is an error (no silent resampling).
    where : str
        Context for messages, e.g. ``"train.csv row id10001--abc--00001"``.

    Returns
    -------
    torch.Tensor
        ``[samples]`` float32.

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> soundfile.write(path, np.arange(10, dtype="float32") / 10, 16000)
    >>> read_segment(path, 2, 5)
    tensor([0.2000, 0.3000, 0.4000])
    >>> read_segment(path, sample_rate=8000)
    Traceback (most recent call last):
    ...
    speechbrain_xmkd.audio.AudioError: audio file '...a.wav' has sample rate 16000, expected 8000
    """
    suffix = f" ({where})" if where else ""
    try:
        with soundfile.SoundFile(str(path)) as handle:
            if handle.samplerate != sample_rate:
                raise AudioError(
                    f"audio file '{path}' has sample rate {handle.samplerate}, "
                    f"expected {sample_rate}{suffix}"
                )
            total = handle.frames
            stop = total if stop is None else min(int(stop), total)
            if start < 0 or start >= stop:
                raise AudioError(
                    f"audio file '{path}' has {total} samples; segment "
                    f"[{start}, {stop}) is empty or out of range{suffix}"
                )
            handle.seek(int(start))
            data = handle.read(stop - int(start), dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as err:
        raise AudioError(f"audio file '{path}' cannot be decoded: {err}{suffix}") from None
    if data.shape[0] == 0:
        raise AudioError(f"audio file '{path}' returned no samples{suffix}")
    return torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))


def random_crop(path, start, stop, crop_samples, generator=None, sample_rate=16000, where=""):
    """Reads a random ``crop_samples`` window inside ``[start, stop)``.

    Shorter segments are tiled (repeated end to end) to the crop length, so a
    short utterance still gives a full crop, as in the paper's trainer.

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> soundfile.write(path, np.arange(4, dtype="float32"), 16000, subtype="FLOAT")
    >>> random_crop(path, 0, 4, 6).tolist()
    [0.0, 1.0, 2.0, 3.0, 0.0, 1.0]
    """
    length = int(stop) - int(start)
    if length >= crop_samples:
        offset = int(torch.randint(0, length - crop_samples + 1, (1,), generator=generator))
        return read_segment(path, start + offset, start + offset + crop_samples, sample_rate, where)
    segment = read_segment(path, start, stop, sample_rate, where)
    return tile(segment, crop_samples)


def tile(segment, length):
    """Repeats ``segment`` end to end and cuts it to ``length`` samples."""
    repeats = -(-length // segment.shape[0])
    return segment.repeat(repeats)[:length]
