"""Tests of the embedded audio-visual corpus (recipes/VoxCeleb/synthetic_prepare.py).

A tiny corpus (4 + 2 identities, 2 sessions, 2 utterances of 1-2 s) is
generated once per module into a temporary folder and only read by the
tests; tests that modify a corpus make their own.
"""

import csv
import os
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import soundfile as sf

RECIPE_DIR = os.path.join(
    os.path.dirname(__file__), "..", "recipes", "VoxCeleb"
)
sys.path.insert(0, os.path.abspath(RECIPE_DIR))
import synthetic_prepare as sp  # noqa: E402

TINY = dict(
    n_train_speakers=4,
    n_test_speakers=2,
    sessions_per_speaker=2,
    utts_per_session=2,
    utt_duration=(1.0, 2.0),
    seg_dur=1.0,
    low_quality_share=0.25,
    n_noise_files=1,
    noise_duration=2.0,
)
SR = 16000


def _generate(root, **overrides):
    kwargs = {**TINY, **overrides}
    report = sp.prepare_synthetic(
        str(root / "data"), str(root / "save"), **kwargs
    )
    return root / "data", root / "save", report


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    data, save, report = _generate(root)
    return data, save, report


def _tree_bytes(folder):
    """Relative path -> bytes of every file under ``folder``."""
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def _read_csv(path):
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, [dict(zip(header, row)) for row in reader]


def _resolve(value, data):
    assert value.startswith("$data_root/"), value
    return os.path.join(str(data), value[len("$data_root/") :])


def _meta(data):
    _, rows = _read_csv(data / "meta.csv")
    return {row["spk_id"]: row for row in rows}


def _estimate_f0(x, sr=SR):
    """Median autocorrelation pitch (Hz) over the loudest 30% of frames."""
    frame, hop = int(0.04 * sr), int(0.01 * sr)
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop]
    energy = np.sum(frames**2, axis=1)
    lo, hi = sr // 350, sr // 60
    f0s = []
    for fr in frames[energy >= np.quantile(energy, 0.7)]:
        fr = fr - fr.mean()
        # biased autocorrelation: decays with the lag, so the period wins
        # over its multiples
        ac = np.correlate(fr, fr, mode="full")[frame - 1 :]
        if ac[0] > 0 and ac[lo:hi].max() > 0.3 * ac[0]:
            f0s.append(sr / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(f0s))


def _noise_floor_db(x, sr=SR):
    """10th minus 90th percentile of 20 ms frame energies (dB)."""
    frames = np.lib.stride_tricks.sliding_window_view(x, sr // 50)[:: sr // 100]
    energy_db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    return float(np.percentile(energy_db, 10) - np.percentile(energy_db, 90))


def _jaw_width(img):
    """Face width (px) just above the chin: first strong edges left/right of the centre."""
    row = img[102:105].astype(float).mean(axis=0)
    grad = np.abs(np.diff(row, axis=0)).sum(axis=1)
    right = 56 + int(np.flatnonzero(grad[56:] > 20)[0])
    left = 55 - int(np.flatnonzero(grad[:56][::-1] > 20)[0])
    return right - left


def _laplacian_variance(path):
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


# --------------------------------------------------------------------------
# Determinism and resumption
# --------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_other_seed_differs(corpus, tmp_path):
    data, save, _ = corpus
    data2, save2, _ = _generate(tmp_path / "again")
    assert _tree_bytes(data2) == _tree_bytes(data)
    assert _tree_bytes(save2) == _tree_bytes(save)

    data3, _, _ = _generate(tmp_path / "other", seed=99)
    wavs = [
        p
        for p in _tree_bytes(data)
        if p.endswith(".wav") and p.startswith("wav")
    ]
    faces = [p for p in _tree_bytes(data) if p.endswith(".png")]
    # Other seed: other session names, so compare the content in order.
    other = _tree_bytes(data3)
    other_wavs = sorted(
        p for p in other if p.endswith(".wav") and p.startswith("wav")
    )
    original = _tree_bytes(data)
    assert len(other_wavs) == len(wavs)
    assert all(
        original[a] != other[b] for a, b in zip(sorted(wavs), other_wavs)
    )
    assert set(faces).isdisjoint(other)


def test_rerun_regenerates_only_deleted_or_damaged_files(corpus, tmp_path):
    data, save, _ = corpus
    work = tmp_path / "work"
    shutil.copytree(data, work / "data")
    shutil.copytree(save, work / "save")
    wavs = sorted((work / "data" / "wav").rglob("*.wav"))
    deleted, truncated = wavs[0], wavs[3]
    original = _tree_bytes(work / "data")
    mtimes = {
        p: p.stat().st_mtime_ns
        for p in (work / "data").rglob("*")
        if p.is_file()
    }
    deleted.unlink()
    truncated.write_bytes(truncated.read_bytes()[:1000])  # an interrupted copy
    (work / "data" / "wav" / "leftover.wav.partial").write_bytes(b"")
    mtimes.pop(truncated)
    mtimes.pop(deleted)

    _, _, report = _generate(work)

    rel = lambda p: os.path.relpath(p, work / "data")  # noqa: E731
    assert sorted(report["files_written"]) == sorted(
        [rel(deleted), rel(truncated)]
    )
    assert deleted.read_bytes() == original[rel(deleted)]
    assert truncated.read_bytes() == original[rel(truncated)]
    for path, mtime in mtimes.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten"
    assert _tree_bytes(work / "save") == _tree_bytes(save)
    assert not (work / "data" / "wav" / "leftover.wav.partial").exists()

    # A third run has nothing to do.
    assert _generate(work)[2]["files_written"] == []


def test_other_parameters_in_same_folder_are_refused(corpus, tmp_path):
    data, _, _ = corpus
    with pytest.raises(ValueError, match="seed"):
        sp.prepare_synthetic(
            str(data), str(tmp_path / "save"), **{**TINY, "seed": 7}
        )


# --------------------------------------------------------------------------
# Layout and csv format
# --------------------------------------------------------------------------


def test_layout_matches_voxceleb(corpus):
    data, _, report = corpus
    meta = _meta(data)
    for spk, row in meta.items():
        assert re.fullmatch(r"id9\d{4}", spk)
        sessions = sorted(os.listdir(data / "wav" / spk))
        assert len(sessions) == TINY["sessions_per_speaker"]
        for sess in sessions:
            assert re.fullmatch(r"[A-Za-z0-9_-]{11}", sess) and "--" not in sess
            utts = sorted(os.listdir(data / "wav" / spk / sess))
            assert utts == [
                f"{i + 1:05d}.wav" for i in range(TINY["utts_per_session"])
            ]
            for utt in utts:
                info = sf.info(str(data / "wav" / spk / sess / utt))
                assert (info.samplerate, info.channels, info.subtype) == (
                    SR,
                    1,
                    "PCM_16",
                )
                assert 1.0 <= info.duration <= 2.0
            face = cv2.imread(
                str(data / "faces" / spk / f"{sess}.png"), cv2.IMREAD_UNCHANGED
            )
            assert face.shape == (112, 112, 3) and face.dtype == np.uint8
    noise = sorted(os.listdir(data / "noise"))
    assert noise == ["babble_01.wav", "music_01.wav", "stationary_01.wav"]
    for name in noise:
        assert sf.info(str(data / "noise" / name)).frames == 2 * SR
    assert report["counts"]["utterances"] == 6 * 2 * 2


def test_train_dev_csv_format(corpus):
    data, save, report = corpus
    ids, files = set(), {}
    for split in ("train", "dev"):
        header, rows = _read_csv(save / f"{split}.csv")
        assert header == [
            "ID",
            "duration",
            "wav",
            "start",
            "stop",
            "spk_id",
            "face",
        ]
        assert rows, split
        for row in rows:
            m = re.fullmatch(
                r"(id9\d{4})--([A-Za-z0-9_-]{11})--(\d{5})_([\d.]+)_([\d.]+)",
                row["ID"],
            )
            assert m, row["ID"]
            spk, sess, utt, t0, t1 = m.groups()
            assert row["spk_id"] == spk
            wav = _resolve(row["wav"], data)
            assert wav.endswith(
                f"wav/{spk}/{sess}/{utt}.wav"
            ) and os.path.isfile(wav)
            face = _resolve(row["face"], data)
            assert face.endswith(f"faces/{spk}/{sess}.png") and os.path.isfile(
                face
            )
            n = sf.info(wav).frames
            assert float(row["duration"]) == pytest.approx(n / SR)
            start, stop = int(row["start"]), int(row["stop"])
            assert 0 <= start < stop <= n
            assert (start, stop) == (int(float(t0) * SR), int(float(t1) * SR))
            assert stop - start == TINY["seg_dur"] * SR
            assert row["ID"] not in ids
            ids.add(row["ID"])
            files.setdefault(wav, set()).add(split)
    assert all(
        len(splits) == 1 for splits in files.values()
    ), "an utterance is in train and dev"
    train_spk = {r["spk_id"] for r in _read_csv(save / "train.csv")[1]}
    assert train_spk == {
        s for s, row in _meta(data).items() if row["split"] == "train"
    }
    assert (
        report["counts"]["train_utterances"]
        + report["counts"]["dev_utterances"]
        == 16
    )


def test_csv_loads_with_speechbrain(corpus):
    dataio = pytest.importorskip("speechbrain.dataio.dataio")
    data, save, _ = corpus
    for split in ("train", "dev", "enrol", "test"):
        rows = dataio.load_data_csv(
            str(save / f"{split}.csv"), replacements={"data_root": str(data)}
        )
        for row in rows.values():
            assert os.path.isfile(row["wav"]) and os.path.isfile(row["face"])


def test_random_segment_gives_one_row_per_file(tmp_path):
    data, save, _ = _generate(
        tmp_path, n_train_speakers=2, n_noise_files=0, random_segment=True
    )
    _, rows = _read_csv(save / "train.csv")
    _, dev = _read_csv(save / "dev.csv")
    assert len(rows) + len(dev) == 2 * 2 * 2
    for row in rows:
        assert row["start"] == "0"
        assert int(row["stop"]) == sf.info(_resolve(row["wav"], data)).frames
        assert re.fullmatch(r"id9\d{4}--[A-Za-z0-9_-]{11}--\d{5}", row["ID"])


# --------------------------------------------------------------------------
# Test identities and trials
# --------------------------------------------------------------------------


def test_trials_use_only_disjoint_test_identities(corpus):
    data, save, report = corpus
    meta = _meta(data)
    train = {s for s, row in meta.items() if row["split"] == "train"}
    test = {s for s, row in meta.items() if row["split"] == "test"}
    assert len(train) == 4 and len(test) == 2 and not train & test
    train_csv = {
        r["spk_id"]
        for split in ("train", "dev")
        for r in _read_csv(save / f"{split}.csv")[1]
    }
    assert train_csv <= train

    lines = (data / "veri_test_synthetic.txt").read_text().splitlines()
    labels = []
    enrol, tst = set(), set()
    for line in lines:
        m = re.fullmatch(
            r"([01]) (id9\d{4}/\S{11}/\d{5}\.wav) (id9\d{4}/\S{11}/\d{5}\.wav)",
            line,
        )
        assert m, line
        label, a, b = int(m[1]), m[2], m[3]
        assert a != b
        assert a.split("/")[0] in test and b.split("/")[0] in test
        assert label == int(a.split("/")[0] == b.split("/")[0])
        assert os.path.isfile(data / "wav" / a) and os.path.isfile(
            data / "wav" / b
        )
        if label:
            assert (
                a.split("/")[1] != b.split("/")[1]
            ), "targets pair different sessions"
        labels.append(label)
        enrol.add(a[:-4])
        tst.add(b[:-4])
    assert sum(labels) == len(labels) - sum(labels) > 0
    assert report["counts"]["target_trials"] == sum(labels)
    for name, keys in (("enrol", enrol), ("test", tst)):
        header, rows = _read_csv(save / f"{name}.csv")
        assert header == [
            "ID",
            "duration",
            "wav",
            "start",
            "stop",
            "spk_id",
            "face",
        ]
        assert {r["ID"] for r in rows} == keys
        for r in rows:
            assert _resolve(r["wav"], data).endswith(r["ID"] + ".wav")
            assert (
                r["start"] == "0"
                and int(r["stop"]) == sf.info(_resolve(r["wav"], data)).frames
            )
            assert r["spk_id"] == r["ID"].split("/")[0]


# --------------------------------------------------------------------------
# The generative model
# --------------------------------------------------------------------------


def _low_quality(data):
    faces = set((data / "low_quality_faces.txt").read_text().split())
    wavs = set((data / "low_quality_wavs.txt").read_text().split())
    return faces, wavs


def test_low_quality_share_and_lists(corpus):
    data, _, report = corpus
    faces, wavs = _low_quality(data)
    n_faces, n_wavs = 6 * 2, 6 * 2 * 2
    assert len(faces) == round(0.25 * n_faces) == 3
    assert len(wavs) == round(0.25 * n_wavs) == 6
    assert faces == set(report["low_quality"]["faces"])
    assert wavs == set(report["low_quality"]["wavs"])
    assert all(os.path.isfile(data / p) for p in faces | wavs)


def test_low_quality_faces_are_blurrier(corpus):
    data, _, _ = corpus
    low, _ = _low_quality(data)
    all_faces = {
        os.path.relpath(p, data) for p in (data / "faces").rglob("*.png")
    }
    low_var = [_laplacian_variance(data / p) for p in low]
    ok_var = [_laplacian_variance(data / p) for p in all_faces - low]
    assert max(low_var) < min(ok_var)


def test_low_quality_audio_is_noisier(corpus):
    data, _, _ = corpus
    _, low = _low_quality(data)
    all_wavs = {os.path.relpath(p, data) for p in (data / "wav").rglob("*.wav")}
    low_floor = [_noise_floor_db(sf.read(str(data / p))[0]) for p in low]
    ok_floor = [
        _noise_floor_db(sf.read(str(data / p))[0]) for p in all_wavs - low
    ]
    assert min(low_floor) > max(ok_floor)


def test_gender_sets_pitch(corpus):
    data, _, _ = corpus
    meta = _meta(data)
    _, low = _low_quality(data)
    f0 = {0: [], 1: []}
    for path in sorted((data / "wav").rglob("*.wav")):
        rel = os.path.relpath(path, data)
        if rel in low:
            continue
        spk = rel.split("/")[1]
        estimate = _estimate_f0(sf.read(str(path))[0])
        f0[int(meta[spk]["gender"])].append(estimate)
        # The estimate follows the f0 recorded for the identity (session and
        # utterance shifts and intonation stay within about 25%).
        assert estimate == pytest.approx(float(meta[spk]["f0_hz"]), rel=0.25)
    assert max(f0[0]) < min(f0[1])


def test_gender_sets_face_shape(corpus):
    data, _, _ = corpus
    meta = _meta(data)
    low, _ = _low_quality(data)
    widths = {0: [], 1: []}
    for path in sorted((data / "faces").rglob("*.png")):
        if os.path.relpath(path, data) in low:
            continue
        widths[int(meta[path.parent.name]["gender"])].append(
            _jaw_width(cv2.imread(str(path)))
        )
    assert np.mean(widths[0]) > np.mean(widths[1]) + 8


def test_gender_alone_changes_the_rendered_face_shape():
    """Same face-only draws and session, other gender: the jaw is wider for 0."""
    for k in range(10):
        faces = {}
        for gender in (0, 1):
            ident = sp.draw_identity(np.random.default_rng(k), gender)
            rgb = sp.render_face(ident, np.random.default_rng(100 + k))
            faces[gender] = _jaw_width(rgb[..., ::-1])
        assert faces[0] >= faces[1] + 6, faces


def test_identity_attributes_follow_the_shared_factors():
    rng = np.random.default_rng(0)
    people = [sp.draw_identity(rng, g) for g in [0, 1] * 50]
    for key in ("f0_hz", "formant_scale", "jaw_half_width", "brow_thickness"):
        g0 = [p[key] for p in people if p["gender"] == 0]
        g1 = [p[key] for p in people if p["gender"] == 1]
        if key in ("f0_hz", "formant_scale"):
            assert max(g0) < min(g1), key
        else:
            assert min(g0) > max(g1), key
    ages = np.array([p["age"] for p in people])
    wrinkle = np.array([p["wrinkle"] for p in people])
    assert np.corrcoef(ages, wrinkle)[0, 1] > 0.9


def test_faces_keep_eyes_on_the_template(corpus):
    """The iris (darker than the sclera) sits within 3 px of each template eye."""
    data, _, _ = corpus
    low, _ = _low_quality(data)
    for path in sorted((data / "faces").rglob("*.png")):
        if os.path.relpath(path, data) in low:
            continue
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(float)
        for x, y in sp.ARCFACE_TEMPLATE[:2]:
            x, y = int(round(x)), int(round(y))
            patch = gray[y - 3 : y + 4, x - 3 : x + 4]
            sclera = max(gray[y, x - 6], gray[y, x + 6])
            assert patch.min() < sclera - 30, path


# --------------------------------------------------------------------------
# Arguments and command line
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, value",
    [
        ("seed", -1),
        ("n_test_speakers", 1),
        ("sessions_per_speaker", 0),
        ("utt_duration", (3.0, 2.0)),
        ("low_quality_share", 1.5),
        ("sample_rate", 4000),
        ("split_ratio", (80, 10)),
        ("seg_dur", 5.0),
    ],
)
def test_bad_arguments_are_named(tmp_path, name, value):
    with pytest.raises(ValueError, match=name):
        sp.prepare_synthetic(
            str(tmp_path / "d"), str(tmp_path / "s"), **{**TINY, name: value}
        )
    assert not (tmp_path / "d").exists()


def test_command_line(tmp_path):
    script = os.path.join(RECIPE_DIR, "synthetic_prepare.py")
    cmd = [
        sys.executable,
        script,
        "--data_folder",
        str(tmp_path / "d"),
        "--save_folder",
        str(tmp_path / "s"),
        "--n_train_speakers",
        "2",
        "--n_test_speakers",
        "2",
        "--sessions_per_speaker",
        "1",
        "--utts_per_session",
        "2",
        "--utt_duration",
        "1",
        "1.5",
        "--seg_dur",
        "1",
        "--n_noise_files",
        "0",
        "--seed",
        "5",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "s" / "train.csv").is_file()
    assert (tmp_path / "d" / "veri_test_synthetic.txt").is_file()

    bad = subprocess.run(
        cmd[:-1] + ["-3"], capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and "seed" in bad.stderr
