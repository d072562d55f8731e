"""VoxCeleb2 preparation with one aligned face per video, and VoxCeleb1 trial lists.

:func:`prepare_voxceleb2` writes the csv files of SpeechBrain's
``voxceleb_prepare.py`` plus a ``face`` column, and the faces themselves;
:func:`prepare_voxceleb1_trials` turns the VoxCeleb1-O/E/H trial lists into
normalised lists and enrol/test csv files.

Layout (``D`` = ``data_folder``, ``S`` = ``save_folder``)::

    D/dev/aac/<spk>/<video>/<utt>.m4a   original VoxCeleb2 audio (optional)
    D/dev/wav/<spk>/<video>/<utt>.wav   16 kHz mono wav: read if present,
                                        otherwise converted from the m4a
                                        with ffmpeg (``D/wav``, ``D/aac`` and
                                        ``D/mp4`` without ``dev/`` work too)
    D/dev/mp4/<spk>/<video>/<utt>.mp4   the videos (faces)
    S/faces/<spk>/<video>.png           one aligned 112x112 face per video
    S/faces/face_index.jsonl            how each face was made (resume)
    S/train.csv, S/dev.csv              the segments
    S/prep_report.json                  counts, and the names of every
                                        fallback, failure and skipped file
    S/opt_voxceleb2_prepare.json        the options of the finished prep

CSV format: header ``ID,duration,wav,start,stop,spk_id,face``. By default
each file is cut into non-overlapping ``seg_dur`` chunks with
``ID = <spk>--<video>--<utt>_<start_s>_<end_s>`` (chunks whose mean ``|x|``
is under ``amp_th`` are dropped), ``duration`` is the length of the whole
file in seconds and ``start``/``stop`` are in samples, exactly as
SpeechBrain writes them; with ``random_segment=True`` each file is one row
``<spk>--<video>--<utt>`` with ``start=0`` and ``stop`` = its length (the
xmkd recipe draws random 2 s crops from it). ``face`` is the aligned face
of the row's video, empty when the video has none.

Paths follow the embedded corpus (``synthetic_prepare.py``): a file inside
``data_folder`` is written as ``$data_root/<path relative to it>``, any other
file (the faces, whose default folder is ``S/faces``) as an absolute path.
``DynamicItemDataset.from_csv(csv, replacements={"data_root": data_folder})``
resolves both.

Faces: for each video the middle frame of the first readable mp4 (in
utterance order) is decoded, MTCNN finds five landmarks and the frame is
warped onto the ArcFace template; when MTCNN finds no face the central
square is used and counted as a fallback; a video without a readable mp4
gets no face and is counted as a failure.

Resuming: converted wavs and faces that exist are kept (both are written
under a temporary name and renamed, so an interrupted run leaves no half
file), csv and report files are only rewritten when their content changes,
and a rerun with the same options whose outputs are complete returns at
once. Other options (``seg_dur``, ``data_fraction``, ...) redo the csv files
and reuse every valid wav and face.

Authors
 * speechbrain-xmkd contributors

Example
-------
::

    python recipes/VoxCeleb/voxceleb_prepare.py --data_folder /data/voxceleb2 \\
        --save_folder results/vox2_prep --random_segment \\
        --verification_files /data/voxceleb1/veri_test2.txt \\
        --voxceleb1_folder /data/voxceleb1 \\
        --trial_files O=/data/voxceleb1/veri_test2.txt H=/data/voxceleb1/list_test_hard2.txt
"""

import argparse
import csv
import glob
import hashlib
import json
import logging
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed

import cv2
import numpy as np
import soundfile

from speechbrain_xmkd.audio import AudioError, audio_info
from speechbrain_xmkd.teachers.align import center_crop_face, read_middle_frame
from speechbrain_xmkd.fileio import atomic_write_bytes, csv_text, write_if_changed

logger = logging.getLogger(__name__)

SAMPLERATE = 16000
CSV_HEADER = ["ID", "duration", "wav", "start", "stop", "spk_id", "face"]
TRIAL_CSV_HEADER = ["ID", "duration", "wav", "start", "stop", "spk_id"]
DATA_ROOT = "$data_root"
OPT_FILE = "opt_voxceleb2_prepare.json"
REPORT_FILE = "prep_report.json"
FACE_INDEX = "face_index.jsonl"
# Bump when the csv content for the same options changes.
PREP_VERSION = 1
# Part of every temporary name, so that a leftover of an interrupted run is
# recognisable and never mistaken for an output.
PARTIAL = ".partial"


def prepare_voxceleb2(
    data_folder,
    save_folder,
    verification_files=(),
    splits=("train", "dev"),
    split_ratio=(90, 10),
    seg_dur=3.0,
    random_segment=False,
    data_fraction=1.0,
    seed=1234,
    amp_th=5e-4,
    min_duration=0.5,
    num_workers=None,
    face_size=112,
    face_folder=None,
    skip_prep=False,
    device="cpu",
    ffmpeg="ffmpeg",
):
    """Prepares VoxCeleb2 dev (audio + one face per video) for the xmkd recipe.

    See the module docstring for the layout, csv format and path convention.

    Arguments
    ---------
    data_folder : str
        VoxCeleb2 root holding ``dev/wav`` or ``dev/aac``, and ``dev/mp4``.
    save_folder : str
        Where csv files, faces (by default) and the report are written.
    verification_files : sequence of str
        VoxCeleb1 trial lists (``1 id10270/x6uYqmx31kE/00001.wav id10270/...``);
        their speakers are left out of train/dev.
    splits : sequence of str
        Which of ``"train"``, ``"dev"`` to write.
    split_ratio : sequence of float
        Train/dev percentages of the utterances (seeded split by utterance;
        every speaker keeps at least one training utterance, so the dev
        labels are all known to the classifier).
    seg_dur : float
        Chunk length in seconds (segmented mode).
    random_segment : bool
        One row per file instead of ``seg_dur`` chunks; the files are then
        not decoded, only their headers read.
    data_fraction : float
        Share in (0, 1] of each speaker's videos that is kept, drawn per
        speaker with ``seed``; at least one video per speaker, so every
        speaker stays (Table 2 of the paper trains on 25%).
    seed : int
        Seed of the data fraction and of the split.
    amp_th : float
        Chunks whose mean absolute amplitude is below it are dropped
        (segmented mode); a file that loses every chunk is skipped as silent.
    min_duration : float
        Files shorter than this many seconds are skipped.
    num_workers : int, optional
        Processes for scanning wavs and extracting faces and parallel ffmpeg
        conversions; 0 or 1 works in this process. Default: up to 8 cores.
    face_size : int
        Side of the aligned face in pixels.
    face_folder : str, optional
        Where faces are written; default ``<save_folder>/faces``.
    skip_prep : bool
        Do nothing and return None.
    device : str
        Where MTCNN runs (``"cpu"``, ``"cuda:0"``).
    ffmpeg : str
        The ffmpeg executable, needed only when m4a files lack their wav.

    Returns
    -------
    dict
        The report written to ``<save_folder>/prep_report.json``.

    Raises
    ------
    FileNotFoundError
        If ``data_folder`` or a verification list is missing, or no audio is
        found (the message names the expected layout).
    RuntimeError
        If m4a files need conversion and ffmpeg cannot be found.
    ValueError
        For a bad option or a malformed verification list.
    """
    if skip_prep:
        return None
    data_folder = os.path.abspath(os.fspath(data_folder))
    save_folder = os.path.abspath(os.fspath(save_folder))
    face_folder = os.path.abspath(
        os.fspath(face_folder) if face_folder else os.path.join(save_folder, "faces")
    )
    splits = _check_options(splits, split_ratio, seg_dur, data_fraction, amp_th, min_duration, face_size)
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    layout = find_layout(data_folder)
    verification_files = [os.path.abspath(os.fspath(f)) for f in verification_files]

    opts = {
        "prep_version": PREP_VERSION,
        "data_folder": data_folder,
        "face_folder": face_folder,
        "verification_files": {f: _sha256(f) for f in verification_files},
        "splits": list(splits),
        "split_ratio": [float(r) for r in split_ratio],
        "seg_dur": float(seg_dur),
        "random_segment": bool(random_segment),
        "data_fraction": float(data_fraction),
        "seed": int(seed),
        "amp_th": float(amp_th),
        "min_duration": float(min_duration),
        "face_size": int(face_size),
    }
    opt_path = os.path.join(save_folder, OPT_FILE)
    if _outputs_complete(save_folder, splits, opts, data_folder):
        logger.info("VoxCeleb2 prep in %s is complete for these options: skipped", save_folder)
        with open(os.path.join(save_folder, REPORT_FILE)) as f:
            return json.load(f)
    os.makedirs(save_folder, exist_ok=True)
    excluded_list = sorted(set().union(*[trial_speakers(f) for f in verification_files]))

    # 1. Audio: convert what is missing, then read every wav header.
    conversion = convert_m4a_to_wav(layout, num_workers, ffmpeg)
    wav_files = _list_media(layout["wav"], ".wav")
    if not wav_files:
        raise FileNotFoundError(
            f"no VoxCeleb2 audio found under '{data_folder}': expected "
            f"{_EXPECTED_LAYOUT.format(d=data_folder)}"
        )
    tasks = [(p, min_duration, seg_dur, amp_th, random_segment) for p in wav_files]
    with _Pool(num_workers) as pool:
        scans = pool.map(_scan_wav, tasks, chunksize=64)
        utts, skipped = [], []
        for path, scan in zip(wav_files, scans):
            spk, video, name = path.split(os.sep)[-3:]
            if scan["reason"]:
                skipped.append({"wav": path, "reason": scan["reason"]})
                logger.warning("skipped %s: %s", path, scan["reason"])
            else:
                utts.append({"spk": spk, "video": video, "utt": name[: -len(".wav")], "wav": path, **scan})

        # 2. Which utterances are used: exclusions, then the data fraction.
        speakers_found = sorted({u["spk"] for u in utts})
        excluded = sorted(set(speakers_found) & set(excluded_list))
        utts = [u for u in utts if u["spk"] not in set(excluded)]
        videos_all = sorted({(u["spk"], u["video"]) for u in utts})
        kept_videos = select_videos(videos_all, data_fraction, seed)
        utts = [u for u in utts if (u["spk"], u["video"]) in kept_videos]
        if not utts:
            raise ValueError(
                f"no usable utterance left in '{data_folder}' ({len(wav_files)} wav files, "
                f"{len(skipped)} skipped, {len(excluded)} speakers excluded): see the log"
            )

        # 3. One face per kept video.
        faces = extract_faces(sorted(kept_videos), layout["mp4"], face_folder, face_size, device, pool)

    # 4. Split and csv files.
    train_utts, dev_utts = split_utterances(utts, split_ratio, seed)
    rows = {}
    for split, part in (("train", train_utts), ("dev", dev_utts)):
        if split in splits:
            rows[split] = _csv_rows(part, faces, data_folder)
            write_if_changed(os.path.join(save_folder, f"{split}.csv"), _csv_text(rows[split]))

    statuses = {s: sorted(k for k, v in faces.items() if v["status"] == s) for s in ("found", "fallback", "failed")}
    report = {
        "data_folder": data_folder,
        "face_folder": face_folder,
        "path_convention": f"paths inside data_folder start with {DATA_ROOT} (pass "
        "replacements={'data_root': data_folder}); other paths are absolute",
        "wav_files": len(wav_files),
        "m4a_files": conversion["m4a_files"],
        "converted_files": conversion["converted"],
        "conversion_failures": conversion["failures"],
        "skipped_wavs": {"count": len(skipped), "files": skipped},
        "speakers": len(speakers_found) - len(excluded),
        "excluded_speakers": {"count": len(excluded), "speakers": excluded},
        "videos": len(kept_videos),
        "videos_before_data_fraction": len(videos_all),
        "utterances": len(utts),
        "faces_found": len(statuses["found"]),
        "fallbacks": {
            "count": len(statuses["fallback"]),
            "videos": [{"video": k, "mp4": faces[k]["mp4"]} for k in statuses["fallback"]],
        },
        "failures": {
            "count": len(statuses["failed"]),
            "videos": [{"video": k, "reason": faces[k]["reason"]} for k in statuses["failed"]],
        },
        "rows": {split: len(r) for split, r in rows.items()},
        "options": {**opts, "verification_files": verification_files},
    }
    write_if_changed(os.path.join(save_folder, REPORT_FILE), json.dumps(report, indent=2) + "\n")
    # Written last: an interrupted run never looks finished.
    write_if_changed(opt_path, json.dumps(opts, indent=2, sort_keys=True) + "\n")
    logger.info(
        "VoxCeleb2 prep: %d speakers, %d videos (%d faces, %d fallbacks, %d failures), "
        "%d skipped wavs, rows %s",
        report["speakers"], report["videos"], report["faces_found"],
        report["fallbacks"]["count"], report["failures"]["count"], len(skipped), report["rows"],
    )
    return report


_EXPECTED_LAYOUT = (
    "'{d}/dev/wav/<spk>/<video>/<utt>.wav' (or '{d}/wav/...'), or the original "
    "'{d}/dev/aac/<spk>/<video>/<utt>.m4a' to be converted, with the videos in "
    "'{d}/dev/mp4/<spk>/<video>/<utt>.mp4'"
)


def find_layout(data_folder):
    """Finds the audio and video folders of a VoxCeleb2 tree.

    Arguments
    ---------
    data_folder : str
        VoxCeleb2 root.

    Returns
    -------
    dict
        ``{"wav": ..., "aac": ..., "mp4": ...}`` folders (``aac`` and ``mp4``
        may not exist); ``<data_folder>/dev`` is used when it holds ``wav``
        or ``aac``, otherwise ``data_folder`` itself.

    Example
    -------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "dev", "aac"))
    >>> os.path.relpath(find_layout(root)["wav"], root)
    'dev/wav'
    >>> find_layout(os.path.join(root, "none"))
    Traceback (most recent call last):
    ...
    FileNotFoundError: VoxCeleb2 data folder '...none' does not exist; expected ...
    """
    expected = _EXPECTED_LAYOUT.format(d=data_folder)
    if not os.path.isdir(data_folder):
        raise FileNotFoundError(f"VoxCeleb2 data folder '{data_folder}' does not exist; expected {expected}")
    for base in (os.path.join(data_folder, "dev"), data_folder):
        if any(os.path.isdir(os.path.join(base, sub)) for sub in ("wav", "aac")):
            return {sub: os.path.join(base, sub) for sub in ("wav", "aac", "mp4")}
    raise FileNotFoundError(f"no VoxCeleb2 audio found under '{data_folder}': expected {expected}")


def _list_media(root, extension):
    """``root/<spk>/<video>/*<extension>``, sorted; hidden (partial) files excluded."""
    if not os.path.isdir(root):
        return []
    return sorted(glob.glob(os.path.join(root, "*", "*", "*" + extension)))


# --------------------------------------------------------------------------
# m4a -> wav
# --------------------------------------------------------------------------


def convert_m4a_to_wav(layout, num_workers=1, ffmpeg="ffmpeg"):
    """Converts every m4a without its wav to 16 kHz mono 16-bit wav.

    Each wav is written by ffmpeg under a hidden temporary name and renamed
    when complete; leftovers of an interrupted run are removed first.

    Arguments
    ---------
    layout : dict
        From :func:`find_layout`.
    num_workers : int
        Parallel ffmpeg processes.
    ffmpeg : str
        The ffmpeg executable (name on PATH or path).

    Returns
    -------
    dict
        ``m4a_files`` (count), ``converted`` (count), ``failures``
        (``[{"file", "reason"}]``).

    Raises
    ------
    RuntimeError
        If a conversion is needed and ``ffmpeg`` is not found.
    """
    for leftover in glob.glob(os.path.join(layout["wav"], "*", "*", ".*" + PARTIAL + "*")):
        os.remove(leftover)
    sources = _list_media(layout["aac"], ".m4a")
    todo = []
    for src in sources:
        rel = os.path.relpath(src, layout["aac"])
        dst = os.path.join(layout["wav"], rel[: -len(".m4a")] + ".wav")
        if not os.path.isfile(dst):
            todo.append((src, dst))
    result = {"m4a_files": len(sources), "converted": 0, "failures": []}
    if not todo:
        return result
    executable = shutil.which(ffmpeg)
    if executable is None:
        raise RuntimeError(
            f"{len(todo)} m4a files under '{layout['aac']}' have no wav yet and ffmpeg "
            f"('{ffmpeg}') was not found: install ffmpeg (e.g. 'apt-get install ffmpeg') "
            f"or convert them yourself to 16 kHz mono wav under '{layout['wav']}'"
        )
    logger.info("Converting %d m4a files to wav with %s", len(todo), executable)
    # Threads are enough: the work happens in the ffmpeg processes.
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        outcomes = list(pool.map(lambda job: _convert_one(executable, *job), todo))
    for (src, _), error in zip(todo, outcomes):
        if error is None:
            result["converted"] += 1
        else:
            result["failures"].append({"file": src, "reason": error})
            logger.warning("could not convert %s: %s", src, error)
    return result


def _convert_one(executable, src, dst):
    """Runs ffmpeg for one file; returns None or the error text."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.{uuid.uuid4().hex}{PARTIAL}")
    cmd = [executable, "-nostdin", "-loglevel", "error", "-y", "-i", src,
           "-ac", "1", "-ar", str(SAMPLERATE), "-c:a", "pcm_s16le", "-f", "wav", tmp]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return f"ffmpeg exit code {proc.returncode}: {proc.stderr.strip()[-500:]}"
        os.replace(tmp, dst)
        return None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# --------------------------------------------------------------------------
# Audio scan
# --------------------------------------------------------------------------


def _scan_wav(task):
    """Checks one wav; in segmented mode also finds its kept chunks.

    Returns ``{"reason": None or why it is skipped, "frames": int,
    "chunks": [(id, start, stop)] or None}``. Never raises: a long prep must
    not stop at one bad file.
    """
    path, min_duration, seg_dur, amp_th, random_segment = task
    out = {"reason": None, "frames": 0, "chunks": None}
    try:
        frames, rate, _ = audio_info(path)
    except AudioError as err:
        out["reason"] = f"unreadable ({err})"
        return out
    out["frames"] = frames
    duration = frames / SAMPLERATE
    if rate != SAMPLERATE:
        out["reason"] = f"sample rate {rate} Hz, expected {SAMPLERATE}"
    elif frames == 0 or duration < min_duration:
        out["reason"] = f"too short: {frames / rate:.3f} s < min_duration {min_duration} s"
    if out["reason"] or random_segment:
        return out
    spk, video, name = path.split(os.sep)[-3:]
    audio_id = "--".join([spk, video, name[: -len(".wav")]])
    chunk_ids = _get_chunks(seg_dur, audio_id, duration)
    if not chunk_ids:
        out["reason"] = f"too short: {duration:.3f} s < seg_dur {seg_dur} s"
        return out
    try:
        signal, _ = soundfile.read(path, dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types; name the file
        out["reason"] = f"unreadable ({err})"
        return out
    signal = signal.mean(axis=1)
    kept = []
    for chunk in chunk_ids:
        start_s, end_s = chunk.split("_")[-2:]
        # Parsed back from the id, as SpeechBrain does, so start/stop match it.
        start = int(float(start_s) * SAMPLERATE)
        stop = min(int(float(end_s) * SAMPLERATE), len(signal))
        if np.mean(np.abs(signal[start:stop])) >= amp_th:
            kept.append((chunk, start, stop))
    if not kept:
        out["reason"] = f"silent: every {seg_dur} s chunk has mean |x| < amp_th {amp_th}"
    out["chunks"] = kept
    return out


def _get_chunks(seg_dur, audio_id, audio_duration):
    """Chunk ids exactly as SpeechBrain's voxceleb_prepare names them.

    Example
    -------
    >>> _get_chunks(1.5, "id1--v--00001", 3.2)
    ['id1--v--00001_0.0_1.5', 'id1--v--00001_1.5_3.0']
    """
    num_chunks = int(audio_duration / seg_dur)
    return [
        audio_id + "_" + str(i * seg_dur) + "_" + str(i * seg_dur + seg_dur)
        for i in range(num_chunks)
    ]


# --------------------------------------------------------------------------
# Selection and split
# --------------------------------------------------------------------------


def select_videos(videos, data_fraction, seed):
    """Keeps a seeded share of each speaker's videos, at least one each.

    The draw for a speaker depends only on the seed and that speaker, so
    adding or removing other speakers does not change it.

    Arguments
    ---------
    videos : iterable of (str, str)
        ``(speaker, video)`` pairs.
    data_fraction : float
        Share in (0, 1] of each speaker's videos to keep (rounded half up).
    seed : int
        Seed of the draw.

    Returns
    -------
    set of (str, str)
        The kept pairs.

    Example
    -------
    >>> pairs = [("a", "v1"), ("a", "v2"), ("a", "v3"), ("a", "v4"), ("b", "w1")]
    >>> kept = select_videos(pairs, 0.5, seed=1)
    >>> sorted(spk for spk, _ in kept)
    ['a', 'a', 'b']
    """
    by_speaker = {}
    for spk, video in sorted(set(videos)):
        by_speaker.setdefault(spk, []).append(video)
    kept = set()
    for spk, vids in by_speaker.items():
        n_keep = max(1, int(np.floor(data_fraction * len(vids) + 0.5)))
        rng = random.Random(f"{seed}/{spk}")
        kept.update((spk, v) for v in rng.sample(vids, min(n_keep, len(vids))))
    return kept


def split_utterances(utts, split_ratio, seed):
    """Seeded train/dev split by utterance that leaves every speaker in train.

    A dev pick that would take a speaker's last training utterance is
    skipped: a speaker unseen in training would break the dev labels.

    Arguments
    ---------
    utts : list of dict
        Utterances with a ``"spk"`` and a ``"wav"`` key.
    split_ratio : sequence of float
        Train and dev percentages.
    seed : int
        Seed of the shuffle.

    Returns
    -------
    tuple of list
        ``(train, dev)``, each sorted by wav path.

    Example
    -------
    >>> utts = [{"spk": s, "wav": f"{s}{i}"} for s in "ab" for i in range(5)]
    >>> train, dev = split_utterances(utts, (80, 20), seed=0)
    >>> len(train), len(dev), sorted({u["spk"] for u in train})
    (8, 2, ['a', 'b'])
    """
    utts = sorted(utts, key=lambda u: u["wav"])
    total = float(sum(split_ratio[:2]))
    n_train = int(split_ratio[0] / total * len(utts))
    n_dev = len(utts) - n_train
    left = {}
    for u in utts:
        left[u["spk"]] = left.get(u["spk"], 0) + 1
    dev = set()
    for i in np.random.default_rng(seed).permutation(len(utts)).tolist():
        if len(dev) == n_dev:
            break
        if left[utts[i]["spk"]] > 1:
            dev.add(i)
            left[utts[i]["spk"]] -= 1
    return (
        [u for i, u in enumerate(utts) if i not in dev],
        [u for i, u in enumerate(utts) if i in dev],
    )


def _csv_rows(utts, faces, data_folder):
    rows = []
    for u in utts:
        audio_id = "--".join([u["spk"], u["video"], u["utt"]])
        duration = str(u["frames"] / SAMPLERATE)
        wav = _csv_path(u["wav"], data_folder)
        face = faces[f"{u['spk']}/{u['video']}"]
        face = _csv_path(face["png"], data_folder) if face["png"] else ""
        if u["chunks"] is None:
            rows.append([audio_id, duration, wav, 0, u["frames"], u["spk"], face])
        else:
            rows.extend([chunk, duration, wav, start, stop, u["spk"], face] for chunk, start, stop in u["chunks"])
    return rows


def _csv_path(path, data_folder):
    """``$data_root/<rel>`` inside ``data_folder``, else the absolute path."""
    rel = os.path.relpath(path, data_folder)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        return path
    return f"{DATA_ROOT}/{rel.replace(os.sep, '/')}"


# --------------------------------------------------------------------------
# Faces
# --------------------------------------------------------------------------


def extract_faces(videos, mp4_root, face_folder, face_size=112, device="cpu", pool=None):
    """Makes (or reuses) one aligned face per video.

    A face is reused when its PNG exists and ``face_index.jsonl`` says it
    was made at this size; failures are retried (a missing mp4 may have
    been added since). The index is appended as results arrive, so an
    interrupted run keeps everything it finished.

    Arguments
    ---------
    videos : list of (str, str)
        ``(speaker, video)`` pairs.
    mp4_root : str
        Folder of ``<spk>/<video>/<utt>.mp4``.
    face_folder : str
        Where ``<spk>/<video>.png`` and the index are written.
    face_size : int
        Side of the aligned face.
    device : str
        Where MTCNN runs.
    pool : object, optional
        Anything with ``imap_unordered(fn, iterable)``; default in-process.

    Returns
    -------
    dict
        ``"<spk>/<video>"`` -> ``{"status": "found" | "fallback" | "failed",
        "png": path or None, "mp4": path or None, "reason": str or None}``.
    """
    os.makedirs(face_folder, exist_ok=True)
    index_path = os.path.join(face_folder, FACE_INDEX)
    index = _read_face_index(index_path)
    results, tasks = {}, []
    for spk, video in videos:
        key = f"{spk}/{video}"
        png = os.path.join(face_folder, spk, video + ".png")
        entry = index.get(key)
        if (
            entry is not None
            and entry["status"] in ("found", "fallback")
            and entry.get("size") == face_size
            and os.path.isfile(png)
        ):
            results[key] = {"status": entry["status"], "png": png, "mp4": entry["mp4"], "reason": None}
        else:
            mp4s = _list_media_dir(os.path.join(mp4_root, spk, video), ".mp4")
            tasks.append((key, mp4s, os.path.join(mp4_root, spk, video), png, face_size, device))
    if tasks:
        logger.info("Extracting %d faces (%d reused)", len(tasks), len(results))
    pool = pool or _Pool(0)
    with open(index_path, "a") as index_file:
        for done, (key, result) in enumerate(pool.imap_unordered(_make_face, tasks), 1):
            results[key] = result
            index_file.write(json.dumps({"video": key, "size": face_size, **result}) + "\n")
            index_file.flush()
            if result["status"] == "failed":
                logger.warning("no face for video %s: %s", key, result["reason"])
            if done % 1000 == 0:
                logger.info("faces: %d / %d", done, len(tasks))
    return results


def _list_media_dir(folder, extension):
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(extension) and not n.startswith("."))


def _read_face_index(path):
    """Last entry per video; a truncated last line (interrupted run) is ignored."""
    index = {}
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    entry = json.loads(line)
                    index[entry["video"]] = entry
                except (ValueError, KeyError, TypeError):
                    continue
    return index


_ALIGNERS = {}


def _make_face(task):
    """Aligns the middle frame of the first readable mp4 of a video; writes the PNG."""
    key, mp4s, mp4_dir, png, face_size, device = task
    reasons = []
    for mp4 in mp4s:
        try:
            frame = read_middle_frame(mp4)
            break
        except (OSError, ValueError, cv2.error) as err:
            reasons.append(str(err))
    else:
        reason = "; ".join(reasons) if reasons else f"no mp4 in '{mp4_dir}'"
        return key, {"status": "failed", "png": None, "mp4": mp4s[0] if mp4s else None, "reason": reason}
    aligner = _aligner(device, face_size)
    try:
        face, found, _ = aligner(frame)
    except Exception as err:  # a detector crash on one frame must not stop the prep
        logger.warning("MTCNN failed on %s (%s): centre crop used", mp4, err)
        face, found = center_crop_face(frame, face_size), False
    ok, data = cv2.imencode(".png", cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    if not ok:
        return key, {"status": "failed", "png": None, "mp4": mp4, "reason": "PNG encoding failed"}
    atomic_write_bytes(png, data.tobytes())
    return key, {"status": "found" if found else "fallback", "png": png, "mp4": mp4, "reason": None}


def _aligner(device, face_size):
    """One FaceAligner per process (MTCNN is loaded once, not per video)."""
    key = (str(device), int(face_size))
    if key not in _ALIGNERS:
        from speechbrain_xmkd.teachers.align import FaceAligner

        _ALIGNERS[key] = FaceAligner(device=device, size=face_size)
    return _ALIGNERS[key]


class _Pool:
    """A spawn process pool, or in-process work when ``num_workers <= 1``.

    Spawn, not fork: forking a process that has loaded torch/OpenMP can
    deadlock the children.
    """

    def __init__(self, num_workers):
        self.num_workers = int(num_workers or 0)
        self.executor = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.executor is not None:
            self.executor.shutdown()
        return False

    def _get(self):
        if self.executor is None and self.num_workers > 1:
            self.executor = ProcessPoolExecutor(
                self.num_workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker
            )
        return self.executor

    def map(self, fn, items, chunksize=1):
        executor = self._get() if len(items) > 1 else None
        if executor is None:
            return [fn(item) for item in items]
        return list(executor.map(fn, items, chunksize=chunksize))

    def imap_unordered(self, fn, items):
        executor = self._get() if len(items) > 1 else None
        if executor is None:
            for item in items:
                yield fn(item)
            return
        futures = [executor.submit(fn, item) for item in items]
        for future in as_completed(futures):
            yield future.result()


def _init_worker():
    # Each worker is one of num_workers processes: more threads each would
    # only oversubscribe the cores.
    cv2.setNumThreads(1)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


# --------------------------------------------------------------------------
# Trial lists
# --------------------------------------------------------------------------


def parse_trial_list(path):
    """Reads a VoxCeleb1 trial list.

    Arguments
    ---------
    path : str
        Lines ``<label 0|1> <spk>/<video>/<utt>.wav <spk>/<video>/<utt>.wav``;
        blank lines are ignored.

    Returns
    -------
    list of tuple
        ``(label, enrol, test, line_number)``.

    Raises
    ------
    FileNotFoundError
        If the list does not exist.
    ValueError
        Naming the file and line number of a malformed line.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "list.txt")
    >>> _ = open(path, "w").write("1 id1/a/00001.wav id1/b/00002.wav\\n0 id1/a/00001.wav\\n")
    >>> parse_trial_list(path)
    Traceback (most recent call last):
    ...
    ValueError: trial list '...list.txt' line 2: expected '<0|1> <spk>/<video>/<utt>.wav <spk>/<video>/<utt>.wav', got '0 id1/a/00001.wav'
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"trial list '{path}' does not exist")
    trials = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            ok = len(fields) == 3 and fields[0] in ("0", "1")
            ok = ok and all(_is_trial_path(p) for p in fields[1:])
            if not ok:
                raise ValueError(
                    f"trial list '{path}' line {number}: expected '<0|1> <spk>/<video>/<utt>.wav "
                    f"<spk>/<video>/<utt>.wav', got '{line.strip()}'"
                )
            trials.append((int(fields[0]), fields[1], fields[2], number))
    if not trials:
        raise ValueError(f"trial list '{path}' has no trials")
    return trials


def _is_trial_path(path):
    parts = path.split("/")
    return len(parts) == 3 and all(parts) and parts[2].endswith(".wav") and ".." not in parts


def trial_speakers(path):
    """Speakers named in a trial list (first path component).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "list.txt")
    >>> _ = open(path, "w").write("0 id10270/a/00001.wav id10300/b/00002.wav\\n")
    >>> sorted(trial_speakers(path))
    ['id10270', 'id10300']
    """
    return {p.split("/")[0] for _, a, b, _ in parse_trial_list(path) for p in (a, b)}


def prepare_voxceleb1_trials(voxceleb1_folder, trial_files, save_folder):
    """Normalised VoxCeleb1-O/E/H lists and their enrol/test csv files.

    For each list ``<name>``: ``<save_folder>/trials_<name>.txt`` (one
    ``<label> <enrol> <test>`` line per trial, single spaces) and
    ``<save_folder>/enrol_test_<name>.csv`` with every utterance of the list
    once (``ID,duration,wav,start,stop,spk_id``; ``ID`` is the list path
    without ``.wav``, ``wav`` is ``$data_root/wav/<path>`` with
    ``data_root = voxceleb1_folder``, one row per whole file).

    Arguments
    ---------
    voxceleb1_folder : str
        VoxCeleb1 root holding ``wav/<spk>/<video>/<utt>.wav``.
    trial_files : dict or sequence
        ``{name: path}``, or paths (named after the file without extension).
    save_folder : str
        Output folder.

    Returns
    -------
    dict
        ``name -> {"trials": path, "csv": path, "trials_count": int,
        "utterances": int}``.

    Raises
    ------
    FileNotFoundError
        If a list or a listed wav is missing (naming the list and line).
    ValueError
        For a malformed line, or a listed wav that cannot be read or is not
        16 kHz.
    """
    wav_root = os.path.join(os.fspath(voxceleb1_folder), "wav")
    if not os.path.isdir(wav_root):
        raise FileNotFoundError(
            f"VoxCeleb1 wav folder '{wav_root}' does not exist; expected "
            f"'{wav_root}/<spk>/<video>/<utt>.wav'"
        )
    if not isinstance(trial_files, dict):
        trial_files = {os.path.splitext(os.path.basename(p))[0]: p for p in trial_files}
    os.makedirs(save_folder, exist_ok=True)
    info_cache, out = {}, {}
    for name, list_path in trial_files.items():
        trials = parse_trial_list(list_path)
        first_line = {}
        for _, enrol, test, number in trials:
            first_line.setdefault(enrol, number)
            first_line.setdefault(test, number)
        rows = []
        for rel in sorted(first_line):
            where = f"listed in '{list_path}' line {first_line[rel]}"
            wav = os.path.join(wav_root, *rel.split("/"))
            if rel not in info_cache:
                if not os.path.isfile(wav):
                    raise FileNotFoundError(f"wav '{wav}' {where} does not exist")
                try:
                    info_cache[rel] = audio_info(wav)
                except AudioError as err:
                    raise AudioError(f"{err} ({where})") from None
            frames, rate, _ = info_cache[rel]
            if rate != SAMPLERATE:
                raise AudioError(f"wav '{wav}' {where} has sample rate {rate}, expected {SAMPLERATE}")
            rows.append([rel[: -len(".wav")], str(frames / SAMPLERATE), f"{DATA_ROOT}/wav/{rel}", 0, frames, rel.split("/")[0]])
        trials_path = os.path.join(save_folder, f"trials_{name}.txt")
        csv_path = os.path.join(save_folder, f"enrol_test_{name}.csv")
        write_if_changed(trials_path, "".join(f"{lab} {a} {b}\n" for lab, a, b, _ in trials))
        write_if_changed(csv_path, _csv_text(rows, TRIAL_CSV_HEADER))
        out[name] = {"trials": trials_path, "csv": csv_path, "trials_count": len(trials), "utterances": len(rows)}
        logger.info("VoxCeleb1 list %s: %d trials, %d utterances", name, len(trials), len(rows))
    return out


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def _check_options(splits, split_ratio, seg_dur, data_fraction, amp_th, min_duration, face_size):
    splits = [splits] if isinstance(splits, str) else list(splits)
    bad = set(splits) - {"train", "dev"}
    if bad or not splits:
        raise ValueError(f"splits must be a non-empty subset of ('train', 'dev'), got {splits}")
    if len(split_ratio) < 2 or min(split_ratio[:2]) < 0 or sum(split_ratio[:2]) <= 0:
        raise ValueError(f"split_ratio must be two non-negative percentages, got {split_ratio}")
    if not 0 < data_fraction <= 1:
        raise ValueError(f"data_fraction must be in (0, 1], got {data_fraction}")
    if seg_dur <= 0 or amp_th < 0 or min_duration < 0 or int(face_size) < 16:
        raise ValueError(
            f"need seg_dur > 0, amp_th >= 0, min_duration >= 0, face_size >= 16; got "
            f"{seg_dur}, {amp_th}, {min_duration}, {face_size}"
        )
    return splits


def _outputs_complete(save_folder, splits, opts, data_folder):
    """True if the opt file matches and every csv, the report and each listed face exist."""
    opt_path = os.path.join(save_folder, OPT_FILE)
    try:
        with open(opt_path) as f:
            if json.load(f) != json.loads(json.dumps(opts)):
                return False
    except (OSError, ValueError):
        return False
    if not os.path.isfile(os.path.join(save_folder, REPORT_FILE)):
        return False
    faces = set()
    for split in splits:
        path = os.path.join(save_folder, f"{split}.csv")
        if not os.path.isfile(path):
            return False
        with open(path, newline="") as f:
            faces.update(row["face"] for row in csv.DictReader(f) if row.get("face"))
    return all(os.path.isfile(face.replace(DATA_ROOT, data_folder, 1)) for face in faces)


def _sha256(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"verification file '{path}' does not exist")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _csv_text(rows, header=CSV_HEADER):
    return csv_text(rows, header)


def main(argv=None):
    """Command-line entry point (see ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_folder", required=True, help="VoxCeleb2 root")
    parser.add_argument("--save_folder", required=True)
    parser.add_argument("--verification_files", nargs="*", default=[], help="trial lists whose speakers are excluded")
    parser.add_argument("--splits", nargs="+", default=["train", "dev"])
    parser.add_argument("--split_ratio", type=float, nargs=2, default=[90, 10])
    parser.add_argument("--seg_dur", type=float, default=3.0)
    parser.add_argument("--random_segment", action="store_true")
    parser.add_argument("--data_fraction", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--amp_th", type=float, default=5e-4)
    parser.add_argument("--min_duration", type=float, default=0.5)
    parser.add_argument("--num_workers", type=int, default=None)
    parser.add_argument("--face_size", type=int, default=112)
    parser.add_argument("--face_folder", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ffmpeg", default="ffmpeg")
    parser.add_argument("--voxceleb1_folder", help="VoxCeleb1 root, for --trial_files")
    parser.add_argument("--trial_files", nargs="*", default=[], metavar="NAME=PATH",
                        help="VoxCeleb1 trial lists to prepare, e.g. O=veri_test2.txt")
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    voxceleb1_folder, trial_files = args.pop("voxceleb1_folder"), args.pop("trial_files")
    try:
        report = prepare_voxceleb2(**args)
        if trial_files:
            if not voxceleb1_folder:
                parser.error("--trial_files needs --voxceleb1_folder")
            lists = dict(item.split("=", 1) if "=" in item else
                         (os.path.splitext(os.path.basename(item))[0], item) for item in trial_files)
            prepare_voxceleb1_trials(voxceleb1_folder, lists, args["save_folder"])
    except (OSError, ValueError, RuntimeError) as err:
        parser.exit(1, f"error: {err}\n")
    summary = {k: report[k] for k in ("speakers", "videos", "faces_found", "rows")}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
