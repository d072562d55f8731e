"""The face-teacher recipe end to end on a tiny set of drawn faces."""

import csv
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from speechbrain_xmkd.teachers.checkpoint import load_state_dict_file
from speechbrain_xmkd.teachers.face import SmallFaceResNet

ROOT = Path(__file__).resolve().parents[1]
HPARAMS = str(ROOT / "recipes/VoxCeleb/hparams/face_teacher.yaml")
HEADER = ["ID", "duration", "wav", "start", "stop", "spk_id", "face"]


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location(
        "xmkd_train_face_teacher", ROOT / "recipes/VoxCeleb/train_face_teacher.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _draw_face(identity, session):
    """A 112x112 RGB 'face': identity = colour and shape, session = light and shift."""
    rng = np.random.default_rng(100 * identity + session)
    img = np.full((112, 112, 3), 40 + 10 * session, np.uint8)
    colour = [(220, 60, 60), (60, 200, 60), (60, 60, 220), (220, 200, 40)][identity]
    centre = (56 + int(rng.integers(-6, 7)), 56 + int(rng.integers(-6, 7)))
    if identity % 2:
        cv2.circle(img, centre, 30 + 4 * identity, colour, -1)
    else:
        corners = (centre[0] - 28, centre[1] - 20), (centre[0] + 28, centre[1] + 34)
        cv2.rectangle(img, *corners, colour, -1)
    return np.clip(img.astype(int) + rng.integers(-15, 16, img.shape), 0, 255).astype(np.uint8)


def _write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as fout:
        writer = csv.writer(fout)
        writer.writerow(HEADER)
        writer.writerows(rows)


def _row(spk, session, utt, face):
    wav = f"$data_root/wav/{spk}/{utt}.wav"
    return [f"{spk}--s{session}--{utt}", "2.0", wav, 0, 32000, spk, face]


@pytest.fixture
def corpus(tmp_path):
    """4 identities x 4 faces, 2 csv rows per face (faces shared across rows)."""
    data = tmp_path / "data"
    train_rows, dev_rows = [], []
    for identity in range(4):
        spk = f"id9000{identity + 1}"
        (data / "faces" / spk).mkdir(parents=True)
        for session in range(4):
            rel = f"faces/{spk}/s{session}.png"
            rgb = _draw_face(identity, session)
            assert cv2.imwrite(str(data / rel), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            for utt in range(2):
                train_rows.append(_row(spk, session, f"u{session}{utt}", f"$data_root/{rel}"))
        dev_rows.append(_row(spk, 0, "u02", f"$data_root/faces/{spk}/s0.png"))
        train_rows.append(_row(spk, 9, "noface", ""))  # no face: ignored
    _write_csv(tmp_path / "train.csv", train_rows)
    _write_csv(tmp_path / "dev.csv", dev_rows)
    return tmp_path


def _overrides(corpus, **extra):
    overrides = {
        "train_annotation": str(corpus / "train.csv"),
        "valid_annotation": str(corpus / "dev.csv"),
        "data_folder": str(corpus / "data"),
        "output_folder": str(corpus / "out"),
        "input_size": 32,
        "channels": [4, 8, 8, 8],
        "embedding_dim": 8,
        "batch_size": 4,
        "number_of_epochs": 1,
    }
    overrides.update(extra)
    return overrides


def _epochs_logged(out):
    lines = (out / "train_log.txt").read_text().splitlines()
    return [int(line.split(",")[0].split(":")[1]) for line in lines if line.startswith("epoch:")]


def test_train_export_skip_and_resume(recipe, corpus):
    out = corpus / "out"
    ckpt = recipe.train_face_teacher(HPARAMS, _overrides(corpus))
    assert ckpt == str(out / "face_teacher.ckpt")
    assert _epochs_logged(out) == [1]

    # A plain weights file: loads with weights_only=True, no classifier head.
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert not any(k.startswith("classifier") for k in state)
    info = json.loads((out / "face_teacher.json").read_text())
    assert info["kwargs"] == {
        "embedding_dim": 8,
        "channels": [4, 8, 8, 8],
        "input_size": 32,
        "blocks_per_stage": 1,
    }
    assert info["num_identities"] == 4
    # One face per identity held out; dev.csv faces are all trained on.
    assert (info["num_train_faces"], info["num_valid_faces"]) == (12, 4)
    assert 0.0 <= info["valid_accuracy"] <= 1.0
    assert info["valid_error"] == pytest.approx(1.0 - info["valid_accuracy"])

    model = SmallFaceResNet(**info["kwargs"])
    assert load_state_dict_file(ckpt, model)["loaded"] == len(state)
    assert torch.equal(model.embedding.weight, state["embedding.weight"])
    faces = torch.from_numpy(_draw_face(0, 0)).unsqueeze(0)
    loaded = recipe.load_face_teacher(str(out))
    assert torch.allclose(loaded.embed_images(faces), model.eval().embed_images(faces))

    # Present: skipped (no new epoch, weights untouched).
    mtime = Path(ckpt).stat().st_mtime_ns
    assert recipe.find_face_teacher(str(out)) == ckpt
    assert recipe.train_face_teacher(HPARAMS, _overrides(corpus, number_of_epochs=2)) == ckpt
    assert _epochs_logged(out) == [1]
    assert Path(ckpt).stat().st_mtime_ns == mtime

    # Forced with one more epoch: resumes from save/ and runs only epoch 2.
    recipe.train_face_teacher(HPARAMS, _overrides(corpus, number_of_epochs=2), force=True)
    assert _epochs_logged(out) == [1, 2]
    info = json.loads((out / "face_teacher.json").read_text())
    assert info["epoch"] in (1, 2)


def test_missing_face_names_file_and_row(recipe, corpus):
    rows = list(csv.reader(open(corpus / "train.csv", encoding="utf-8")))[1:]
    rows[5][-1] = "$data_root/faces/id90009/gone.png"
    _write_csv(corpus / "train.csv", rows)
    with pytest.raises(FileNotFoundError) as err:
        recipe.train_face_teacher(HPARAMS, _overrides(corpus))
    message = str(err.value)
    assert str(corpus / "data/faces/id90009/gone.png") in message
    assert f"{corpus / 'train.csv'} row 6 (ID '{rows[5][0]}')" in message


def test_undecodable_face_names_file_and_row(recipe, corpus):
    bad = corpus / "data/faces/id90002/s3.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError) as err:
        recipe.train_face_teacher(HPARAMS, _overrides(corpus, valid_faces_per_speaker=0))
    message = str(err.value)
    assert f"'{bad}' could not be decoded" in message
    # First row listing it: id90002 is the second identity, 9 rows each.
    assert f"{corpus / 'train.csv'} row {9 + 3 * 2 + 1} (ID 'id90002--s3--u30')" in message


def test_data_root_needs_data_folder(recipe, corpus):
    with pytest.raises(ValueError, match=r"\$data_root; pass --data_folder"):
        recipe.read_face_csv(corpus / "train.csv")


def test_held_out_faces_are_never_trained_on(recipe, corpus):
    faces = recipe.read_face_csv(corpus / "train.csv", corpus / "data")
    dev = recipe.read_face_csv(corpus / "dev.csv", corpus / "data")
    assert len(faces) == 16  # unique faces, rows without a face skipped
    train, valid, skipped = recipe.split_faces(faces, dev, 1, seed=3)
    assert set(train).isdisjoint(valid)
    assert len(train) + len(valid) == 16
    assert sorted(e["spk_id"] for e in valid.values()) == [f"id9000{i}" for i in range(1, 5)]
    # dev.csv faces that are held out count as validation, others are skipped.
    assert skipped["trained_on"] == sum(p in train for p in dev)
    assert recipe.split_faces(faces, dev, 1, seed=3)[1].keys() == valid.keys()


def test_face_augment(recipe):
    x = torch.rand(3, 3, 20, 20) * 255
    identity = recipe.FaceAugment(flip_prob=0.0, max_shift=0.0, min_scale=1.0, brightness=0.0)
    assert torch.allclose(identity(x), x, atol=1e-3)
    flip = recipe.FaceAugment(flip_prob=1.0, max_shift=0.0, min_scale=1.0, brightness=0.0)
    assert torch.allclose(flip(x), x.flip(-1), atol=1e-3)
    torch.manual_seed(0)
    jitter = recipe.FaceAugment(flip_prob=0.0, max_shift=0.0, min_scale=1.0, brightness=0.3)(x)
    ratio = jitter.sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))
    assert ((ratio > 0.69) & (ratio < 1.31)).all() and jitter.max() <= 255
    moved = recipe.FaceAugment(max_shift=0.1, min_scale=0.8)(x)
    assert moved.shape == x.shape and not torch.allclose(moved, x)
