"""Tests of the VoxCeleb2 + faces preparation (recipes/VoxCeleb/voxceleb_prepare.py).

Every test builds a tiny VoxCeleb2-like tree in its own temporary folder:
3 speakers x 2 videos x 2 utterances with blank-frame mp4 videos (MTCNN
finds no face there, so every face is a counted centre-crop fallback), one
more video without mp4, a 0.1 s, an 8 kHz and a corrupt wav, and a fourth speaker
who is in the VoxCeleb1-style trial list.
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import soundfile as sf

RECIPE_DIR = os.path.join(os.path.dirname(__file__), "..", "recipes", "VoxCeleb")
sys.path.insert(0, os.path.abspath(RECIPE_DIR))
import voxceleb_prepare as vp  # noqa: E402

SR = 16000
HEADER = ["ID", "duration", "wav", "start", "stop", "spk_id", "face"]
VIDEOS = {
    "id00001": ["vidA0000001", "vidB0000001"],
    "id00002": ["vidC0000002", "vidD0000002"],
    "id00003": ["vidE0000003", "vidF0000003"],
}
NO_MP4 = ("id00003", "vidG0000003")
TEST_SPEAKER = ("id00004", "vidH0000004")
SHORT_WAV = "id00001/vidA0000001/00003.wav"
RATE_WAV = "id00002/vidC0000002/00003.wav"
CORRUPT_WAV = "id00002/vidD0000002/00003.wav"
# Its second second is silent: that 1 s chunk must be dropped.
HALF_SILENT_WAV = "id00001/vidB0000001/00002.wav"


def _mp4_writable(tmp_dir):
    path = os.path.join(tmp_dir, "probe.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 25, (160, 120))
    ok = writer.isOpened()
    if ok:
        for _ in range(3):
            writer.write(np.zeros((120, 160, 3), np.uint8))
    writer.release()
    ok = ok and os.path.isfile(path) and os.path.getsize(path) > 0
    if os.path.exists(path):
        os.remove(path)
    return ok


def _write_mp4(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 25, (160, 120))
    for _ in range(6):
        writer.write(np.zeros((120, 160, 3), np.uint8))
    writer.release()


def _write_wav(path, seconds, sr=SR, seed=0, silent_from=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    x = 0.1 * np.random.default_rng(seed).standard_normal(int(round(seconds * sr)))
    if silent_from is not None:
        x[int(silent_from[0] * sr) : int(silent_from[1] * sr)] = 0.0
    sf.write(path, x.astype("float32"), sr, subtype="PCM_16")


def _build_tree(root, with_mp4):
    """VoxCeleb2-like dev tree; returns (data_folder, trial_list)."""
    data = root / "vox2"
    wav_root, mp4_root = data / "dev" / "wav", data / "dev" / "mp4"
    seed = 0
    pairs = [(s, v) for s, vids in VIDEOS.items() for v in vids] + [NO_MP4, TEST_SPEAKER]
    for spk, video in pairs:
        n_utts = 1 if (spk, video) == TEST_SPEAKER else 2
        for u in range(1, n_utts + 1):
            rel = f"{spk}/{video}/{u:05d}.wav"
            seed += 1
            silent = (1.0, 2.0) if rel == HALF_SILENT_WAV else None
            _write_wav(str(wav_root / rel), 3.5 - 0.25 * u, seed=seed, silent_from=silent)
            if with_mp4 and (spk, video) != NO_MP4:
                _write_mp4(str(mp4_root / spk / video / f"{u:05d}.mp4"))
    _write_wav(str(wav_root / SHORT_WAV), 0.1, seed=100)
    _write_wav(str(wav_root / RATE_WAV), 2.0, sr=8000, seed=101)
    (wav_root / CORRUPT_WAV).write_bytes(b"RIFF\x00\x00garbage, not a wav file")
    trials = root / "veri_test.txt"
    trials.write_text(
        f"1 {TEST_SPEAKER[0]}/{TEST_SPEAKER[1]}/00001.wav id10270/x6uYqmx31kE/00001.wav\n"
        "0 id10270/x6uYqmx31kE/00001.wav id10300/ZdfGH6hFJ3Y/00002.wav\n"
    )
    return data, trials


@pytest.fixture(autouse=True)
def one_torch_thread():
    """MTCNN on 160x120 frames gains nothing from threads; on the shared
    test machine a second thread only waits for a busy core (25x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tree(tmp_path):
    if not _mp4_writable(str(tmp_path)):
        pytest.skip("this OpenCV build cannot write mp4 ('mp4v'): face checks need videos")
    data, trials = _build_tree(tmp_path, with_mp4=True)
    return data, trials, tmp_path / "save"


def _prepare(data, trials, save, **kwargs):
    kwargs = {"verification_files": [str(trials)], "seg_dur": 1.0, "num_workers": 1, **kwargs}
    return vp.prepare_voxceleb2(str(data), str(save), **kwargs)


def _read_csv(path):
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, [dict(zip(header, row)) for row in reader]


def _resolve(value, data):
    return value.replace("$data_root", str(data), 1)


def _mtimes(folder):
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            out[os.path.relpath(path, folder)] = os.stat(path).st_mtime_ns
    return out


def test_segmented_csv_faces_and_report(tree):
    data, trials, save = tree
    report = _prepare(data, trials, save)
    rows = []
    for split in ("train", "dev"):
        header, split_rows = _read_csv(save / f"{split}.csv")
        assert header == HEADER
        rows += split_rows
    assert len({r["wav"] for r in rows}) == 3 * 2 * 2 + 2  # + the no-mp4 video

    for row in rows:
        spk, video, utt_rest = row["ID"].split("--")
        utt, start_s, end_s = utt_rest.split("_")
        assert row["spk_id"] == spk
        assert row["wav"] == f"$data_root/dev/wav/{spk}/{video}/{utt}.wav"
        wav = _resolve(row["wav"], data)
        frames = sf.info(wav).frames
        start, stop = int(row["start"]), int(row["stop"])
        # SpeechBrain's conventions: samples from the id's seconds, whole-file duration.
        assert (start, stop) == (int(float(start_s) * SR), int(float(end_s) * SR))
        assert 0 <= start < stop <= frames and stop - start == SR
        assert float(row["duration"]) == pytest.approx(frames / SR)
        if (spk, video) == NO_MP4:
            assert row["face"] == ""
        else:
            face = _resolve(row["face"], data)
            assert face == str(save / "faces" / spk / f"{video}.png")
            image = cv2.imread(face)
            assert image is not None and image.shape == (112, 112, 3)

    # The silent second of one file is dropped; its other chunks stay.
    half = sorted(r["ID"] for r in rows if r["wav"].endswith(HALF_SILENT_WAV))
    assert half == [f"{HALF_SILENT_WAV[:-4].replace('/', '--')}_{a}_{b}" for a, b in ((0.0, 1.0), (2.0, 3.0))]

    # Test-list speaker and bad wavs are out, named in the report.
    assert TEST_SPEAKER[0] not in {r["spk_id"] for r in rows}
    assert report["excluded_speakers"] == {"count": 1, "speakers": [TEST_SPEAKER[0]]}
    assert report["speakers"] == 3
    skipped = {os.path.relpath(s["wav"], data / "dev" / "wav"): s["reason"] for s in report["skipped_wavs"]["files"]}
    assert set(skipped) == {SHORT_WAV, RATE_WAV, CORRUPT_WAV}
    assert "too short" in skipped[SHORT_WAV] and "8000" in skipped[RATE_WAV]
    assert "unreadable" in skipped[CORRUPT_WAV]
    assert report["wav_files"] == 3 * 2 * 2 + 2 + 1 + 3

    # Blank frames: every face is a fallback; the mp4-less video is a failure.
    assert report["videos"] == 7 and report["faces_found"] == 0
    assert report["fallbacks"]["count"] == 6
    assert all(f["mp4"].endswith("00001.mp4") for f in report["fallbacks"]["videos"])
    assert report["failures"]["count"] == 1
    failure = report["failures"]["videos"][0]
    assert failure["video"] == "/".join(NO_MP4) and "no mp4" in failure["reason"]
    assert json.loads((save / "prep_report.json").read_text()) == report

    # The csv loads with SpeechBrain and its replacement convention.
    from speechbrain.dataio.dataio import load_data_csv

    loaded = load_data_csv(str(save / "train.csv"), replacements={"data_root": str(data)})
    assert all(os.path.isfile(r["wav"]) for r in loaded.values())


def test_random_segment_split_and_data_fraction(tree):
    data, trials, save = tree
    faces = str(save.parent / "faces")  # shared: the later preps reuse the faces
    report = _prepare(data, trials, save, random_segment=True, split_ratio=(75, 25), face_folder=faces)
    _, train = _read_csv(save / "train.csv")
    _, dev = _read_csv(save / "dev.csv")
    rows = train + dev
    assert len(rows) == len({r["ID"] for r in rows}) == 14 == report["utterances"]
    for row in rows:
        assert row["ID"].count("--") == 2 and "_" not in row["ID"].split("--")[2]
        assert row["face"] == "" or row["face"].startswith(faces)
        assert int(row["start"]) == 0 and int(row["stop"]) == sf.info(_resolve(row["wav"], data)).frames
    assert len(train) == int(0.75 * 14) and {r["spk_id"] for r in train} == set(VIDEOS)
    assert not {r["ID"] for r in train} & {r["ID"] for r in dev}

    save_half = save.parent / "save_half"
    half = _prepare(data, trials, save_half, random_segment=True, data_fraction=0.5, face_folder=faces)
    _, rows = _read_csv(save_half / "train.csv")
    _, dev = _read_csv(save_half / "dev.csv")
    videos = {tuple(r["ID"].split("--")[:2]) for r in rows + dev}
    assert {spk for spk, _ in videos} == set(VIDEOS)  # every speaker kept
    assert half["videos"] == len(videos) == 4  # 1 of 2 videos, 2 of 3 for id00003 (rounded half up)
    assert half["videos_before_data_fraction"] == 7
    for spk in ("id00001", "id00002"):
        assert sum(1 for s, _ in videos if s == spk) == 1
    # The same seed draws the same videos.
    again = _prepare(data, trials, save.parent / "save_half2", random_segment=True, data_fraction=0.5, face_folder=faces)
    _, rows2 = _read_csv(save.parent / "save_half2" / "train.csv")
    assert again["videos"] == 4 and rows2 == rows


def test_rerun_is_a_noop_and_only_a_deleted_face_is_redone(tree):
    data, trials, save = tree
    _prepare(data, trials, save, random_segment=True)
    before = _mtimes(save)
    _prepare(data, trials, save, random_segment=True)
    assert _mtimes(save) == before

    gone = save / "faces" / "id00002" / "vidD0000002.png"
    gone.unlink()
    report = _prepare(data, trials, save, random_segment=True)
    assert gone.is_file()
    after = _mtimes(save)
    changed = {p for p in after if after[p] != before.get(p)}
    assert changed == {os.path.relpath(gone, save), os.path.join("faces", vp.FACE_INDEX)}
    assert report["fallbacks"]["count"] == 6

    # New options redo the csv files and reuse every face.
    faces_before = {p: t for p, t in after.items() if p.endswith(".png")}
    _prepare(data, trials, save, random_segment=False)
    _, rows = _read_csv(save / "train.csv")
    assert all("_" in r["ID"].split("--")[2] for r in rows)
    assert {p: t for p, t in _mtimes(save).items() if p.endswith(".png")} == faces_before


def test_face_extraction_in_worker_processes(tree):
    data, trials, save = tree
    report = _prepare(data, trials, save, random_segment=True, num_workers=2)
    assert report["fallbacks"]["count"] == 6 and report["failures"]["count"] == 1
    assert len(list((save / "faces").glob("*/*.png"))) == 6


def test_missing_folder_and_empty_tree_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; expected .*dev/wav"):
        vp.prepare_voxceleb2(str(tmp_path / "nope"), str(tmp_path / "save"))
    (tmp_path / "empty" / "dev" / "wav").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no VoxCeleb2 audio found .*<spk>/<video>/<utt>\.wav"):
        vp.prepare_voxceleb2(str(tmp_path / "empty"), str(tmp_path / "save"))


def _m4a_tree(root):
    data = root / "vox2"
    src = data / "dev" / "aac" / "id00001" / "vidA0000001" / "00001.m4a"
    src.parent.mkdir(parents=True)
    return data, src


def test_m4a_needs_ffmpeg_clear_error(tmp_path):
    data, src = _m4a_tree(tmp_path)
    src.write_bytes(b"not converted")
    with pytest.raises(RuntimeError, match=r"1 m4a files under .*aac.* ffmpeg \('/no/such/ffmpeg'\) was not found"):
        vp.prepare_voxceleb2(str(data), str(tmp_path / "save"), ffmpeg="/no/such/ffmpeg", num_workers=1)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed: conversion not testable")
def test_m4a_conversion(tmp_path):
    data, src = _m4a_tree(tmp_path)
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=1.5",
         "-ar", "44100", "-ac", "2", "-c:a", "aac", str(src)],
        check=True,
    )
    wav_dir = data / "dev" / "wav" / "id00001" / "vidA0000001"
    wav_dir.mkdir(parents=True)
    (wav_dir / ".00001.wav.deadbeef.partial").write_bytes(b"half")  # an interrupted run's leftover
    report = vp.prepare_voxceleb2(str(data), str(tmp_path / "save"), random_segment=True, num_workers=1)
    info = sf.info(str(wav_dir / "00001.wav"))
    assert (info.samplerate, info.channels) == (16000, 1)
    assert abs(info.frames - 1.5 * SR) < 0.05 * SR
    assert os.listdir(wav_dir) == ["00001.wav"]
    assert report["converted_files"] == 1 and report["m4a_files"] == 1
    assert report["failures"]["count"] == 1  # no mp4 for that video
    _, rows = _read_csv(tmp_path / "save" / "train.csv")
    assert [r["face"] for r in rows] == [""]


# --------------------------------------------------------------------------
# VoxCeleb1 trial lists
# --------------------------------------------------------------------------


def _vox1(root):
    folder = root / "vox1"
    for i, rel in enumerate(["id10270/aaa/00001.wav", "id10270/bbb/00002.wav", "id10300/ccc/00001.wav"]):
        _write_wav(str(folder / "wav" / rel), 1.0 + 0.5 * i, seed=i)
    return folder


def test_voxceleb1_trials(tmp_path):
    folder = _vox1(tmp_path)
    lst = tmp_path / "veri_test2.txt"
    lst.write_text(
        "1 id10270/aaa/00001.wav  id10270/bbb/00002.wav\n\n"
        "0\tid10270/aaa/00001.wav id10300/ccc/00001.wav\r\n"
    )
    out = vp.prepare_voxceleb1_trials(str(folder), {"O": str(lst)}, str(tmp_path / "save"))
    assert out["O"]["trials_count"] == 2 and out["O"]["utterances"] == 3
    assert (tmp_path / "save" / "trials_O.txt").read_text() == (
        "1 id10270/aaa/00001.wav id10270/bbb/00002.wav\n0 id10270/aaa/00001.wav id10300/ccc/00001.wav\n"
    )
    header, rows = _read_csv(tmp_path / "save" / "enrol_test_O.csv")
    assert header == ["ID", "duration", "wav", "start", "stop", "spk_id"]
    assert [r["ID"] for r in rows] == ["id10270/aaa/00001", "id10270/bbb/00002", "id10300/ccc/00001"]
    assert [r["spk_id"] for r in rows] == ["id10270", "id10270", "id10300"]
    assert [int(r["stop"]) for r in rows] == [16000, 24000, 32000]
    assert [float(r["duration"]) for r in rows] == [1.0, 1.5, 2.0]
    assert rows[1]["wav"] == "$data_root/wav/id10270/bbb/00002.wav"


def test_voxceleb1_trials_errors(tmp_path):
    folder = _vox1(tmp_path)
    bad = tmp_path / "list_test_hard2.txt"
    bad.write_text("1 id10270/aaa/00001.wav id10270/bbb/00002.wav\n2 id10270/aaa/00001.wav id10300/ccc/00001.wav\n")
    with pytest.raises(ValueError, match=r"list_test_hard2\.txt' line 2: expected"):
        vp.prepare_voxceleb1_trials(str(folder), [str(bad)], str(tmp_path / "save"))
    missing = tmp_path / "list_test_all2.txt"
    missing.write_text("1 id10270/aaa/00001.wav id10270/bbb/00002.wav\n0 id10270/aaa/00001.wav id10999/zzz/00001.wav\n")
    with pytest.raises(FileNotFoundError, match=r"id10999/zzz/00001\.wav' listed in .*list_test_all2\.txt' line 2"):
        vp.prepare_voxceleb1_trials(str(folder), [str(missing)], str(tmp_path / "save"))
    with pytest.raises(FileNotFoundError, match="wav folder"):
        vp.prepare_voxceleb1_trials(str(tmp_path / "nowhere"), [str(missing)], str(tmp_path / "save"))
