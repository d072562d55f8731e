"""Test-time noise (Eq. 13): level, looping, determinism, errors that name the file."""

import numpy as np
import pytest
import soundfile
import torch

from speechbrain_xmkd.audio import AudioError
from speechbrain_xmkd.noise import NoisePicker, mix_at_delta_db


def snr_db(clean, mixed):
    """Eq. 13 computed independently: 10 log10 of the power ratio, in float64 numpy."""
    clean = np.asarray(clean, dtype=np.float64)
    noise = np.asarray(mixed, dtype=np.float64) - clean
    return 10 * np.log10(np.mean(clean**2) / np.mean(noise**2))


@pytest.fixture
def speech():
    t = torch.arange(48000) / 16000
    envelope = 0.5 + 0.5 * torch.sin(2 * np.pi * 1.5 * t)  # non-stationary, like speech
    return (0.3 * envelope * torch.sin(2 * np.pi * 180 * t)).float()


@pytest.mark.parametrize("delta_db", [15.0, 10.0, 5.0, 0.0, -3.0])
@pytest.mark.parametrize("noise_len", [3000, 48000, 90000])
def test_mix_hits_requested_delta_db(speech, delta_db, noise_len):
    noise = torch.from_numpy(np.random.default_rng(1).standard_normal(noise_len).astype("float32")) * 5
    mixed = mix_at_delta_db(speech, noise, delta_db)
    assert mixed.shape == speech.shape and mixed.dtype == speech.dtype
    assert abs(snr_db(speech.numpy(), mixed.numpy()) - delta_db) < 0.1


def test_short_noise_is_looped(speech):
    noise = torch.linspace(-1, 1, 1000)
    added = (mix_at_delta_db(speech, noise, 10).double() - speech.double()).numpy()
    gain = added[1] / noise[1].item()
    assert np.allclose(added, gain * np.tile(noise.numpy(), 48)[:48000], atol=1e-5)


def test_silent_inputs_are_errors(speech):
    with pytest.raises(ValueError, match="speech is silent"):
        mix_at_delta_db(torch.zeros(100), torch.ones(100), 5)
    with pytest.raises(ValueError, match="noise is silent"):
        mix_at_delta_db(speech, torch.zeros(100), 5)


@pytest.fixture
def noise_folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "music").mkdir()
    for name, length in (("babble.wav", 20000), ("music/pad.flac", 9000), ("hum.wav", 700)):
        soundfile.write(tmp_path / name, (0.1 * rng.standard_normal(length)).astype("float32"), 16000)
    (tmp_path / "readme.txt").write_text("not audio")
    return tmp_path


def test_picker_is_deterministic_per_utterance_and_seed(noise_folder, speech):
    a, b = NoisePicker(noise_folder, seed=3), NoisePicker(noise_folder, seed=3)
    keys = [f"id{i}/video/{i:05d}.wav" for i in range(12)]
    # Another instance, another call order: the same segments.
    first = [a.segment(k, 30000) for k in keys]
    second = [b.segment(k, 30000) for k in reversed(keys)][::-1]
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    assert len(a.files) == 3 and {a.choice(k)[0] for k in keys} == set(a.files)
    other = NoisePicker(noise_folder, seed=4)
    assert any(not torch.equal(a.segment(k, 30000), other.segment(k, 30000)) for k in keys)
    # Every delta_db uses the same segment, only scaled.
    n15 = a(speech, keys[0], 15).double() - speech.double()
    n5 = a(speech, keys[0], 5).double() - speech.double()
    assert torch.allclose(n5, n15 * 10 ** 0.5, atol=1e-5)
    assert abs(snr_db(speech.numpy(), a(speech, keys[0], 5).numpy()) - 5) < 0.1


def test_picker_segment_reads_the_file_from_its_offset_and_wraps(noise_folder):
    picker = NoisePicker(noise_folder, seed=0)
    for key in (f"u{i}" for i in range(20)):
        path, start = picker.choice(key)
        data = torch.from_numpy(soundfile.read(path, dtype="float32")[0])
        expected = data[(start + torch.arange(25000)) % len(data)]
        assert torch.equal(picker.segment(key, 25000), expected)


def test_picker_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="noise folder .* does not exist"):
        NoisePicker(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="holds no .wav or .flac"):
        NoisePicker(tmp_path)
    soundfile.write(tmp_path / "slow.wav", np.ones(800, dtype="float32") * 0.1, 8000)
    with pytest.raises(AudioError, match=r"noise file '.*slow.wav' has sample rate 8000, expected 16000"):
        NoisePicker(tmp_path).segment("k", 100)
    (tmp_path / "slow.wav").unlink()
    soundfile.write(tmp_path / "silent.wav", np.zeros(800, dtype="float32"), 16000)
    with pytest.raises(AudioError, match=r"noise .*silent.*silent.wav"):
        NoisePicker(tmp_path)(torch.ones(100), "k", 5)
