"""The real speaker recipe end to end on a tiny embedded corpus: train, resume, bad input."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "recipes" / "VoxCeleb" / "train.py"
YAML = ROOT / "recipes" / "VoxCeleb" / "hparams" / "synthetic_xmkd.yaml"
TINY = [
    "--n_train_speakers=6", "--out_n_neurons=6", "--n_test_speakers=3", "--sessions_per_speaker=2",
    "--utts_per_session=2", "--speakers_per_batch=3", "--teacher_epochs=2",
    "--channels=[16,16,16,16,48]", "--emb_dim=32", "--test_n_crops=2",
]


def run_recipe(*args, check=True):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(TRAIN), str(YAML), *TINY, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    corpus, out = root / "corpus", root / "out"
    first = run_recipe(f"--data_folder={corpus}", f"--output_folder={out}", "--number_of_epochs=1")
    cache_files = sorted((out / "teacher_cache").rglob("*"))
    stamps = {p: p.stat().st_mtime_ns for p in cache_files if p.is_file()}
    second = run_recipe(f"--data_folder={corpus}", f"--output_folder={out}", "--number_of_epochs=2")
    return {"corpus": corpus, "out": out, "first": first, "second": second, "cache_stamps": stamps}


def test_train_log_has_every_named_term_and_resumes(trained):
    log = (trained["out"] / "train_log.txt").read_text()
    epochs = [line for line in log.splitlines() if line.startswith("epoch:")]
    # The second run resumed after epoch 1: epoch 1 was not trained again.
    assert [line.split(",")[0] for line in epochs] == ["epoch: 1", "epoch: 2"]
    for term in ("train task", "train soft_feature", "valid ErrorRate", "lr"):
        assert term in epochs[1]
    assert "Loading a checkpoint" in trained["second"].stdout + trained["second"].stderr


def test_teacher_cache_reused_not_rebuilt(trained):
    assert trained["cache_stamps"], "the first run wrote no teacher cache"
    for path, stamp in trained["cache_stamps"].items():
        assert path.stat().st_mtime_ns == stamp, f"{path} was rewritten on resume"


def test_verification_outputs_are_consistent(trained):
    results = json.loads((trained["out"] / "results.json").read_text())["synthetic"]["clean"]
    lines = (trained["out"] / "scores" / "synthetic_clean.txt").read_text().splitlines()
    trials = (trained["corpus"] / "veri_test_synthetic.txt").read_text().splitlines()
    assert results["trials"] == len(lines) == len(trials)
    assert 0.0 <= results["eer"] <= 1.0 and 0.0 <= results["min_dcf"] <= 1.0
    # Recompute the EER from the scores file with a brute-force sweep.
    pairs = [(int(l.split()[2]), float(l.split()[3])) for l in lines]
    pos = [s for y, s in pairs if y == 1]
    neg = [s for y, s in pairs if y == 0]
    best = min(
        (abs(sum(p < t for p in pos) / len(pos) - sum(n >= t for n in neg) / len(neg)),
         (sum(p < t for p in pos) / len(pos) + sum(n >= t for n in neg) / len(neg)) / 2)
        for t in sorted(set(pos + neg)) + [max(pos + neg) + 1]
    )[1]
    assert results["eer"] == pytest.approx(best, abs=0.5 / min(len(pos), len(neg)) + 1e-6)


def test_checkpoint_holds_projection_and_quality_buffers(trained):
    import torch

    ckpts = sorted((trained["out"] / "save").glob("CKPT+*"))
    state = torch.load(ckpts[-1] / "distiller.ckpt", map_location="cpu", weights_only=True)
    assert any(k.startswith("projection.mlp") for k in state)
    assert "weighter.running_mean" in state and int(state["weighter.num_batches_tracked"][0]) > 0


def test_csv_missing_column_is_named(trained, tmp_path):
    broken = tmp_path / "train.csv"
    with open(trained["corpus"] / "prep" / "train.csv") as src, open(broken, "w", newline="") as dst:
        rows = list(csv.DictReader(src))
        writer = csv.DictWriter(dst, fieldnames=[f for f in rows[0] if f != "face"])
        writer.writeheader()
        writer.writerows({k: v for k, v in r.items() if k != "face"} for r in rows)
    proc = run_recipe(f"--data_folder={trained['corpus']}", f"--output_folder={tmp_path / 'o'}",
                      f"--train_annotation={broken}", "--number_of_epochs=1", check=False)
    assert proc.returncode != 0
    assert f"{broken}: missing column(s) face" in proc.stdout + proc.stderr


def test_corrupt_wav_is_named_with_its_row(trained, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    rows = list(csv.DictReader(open(trained["corpus"] / "prep" / "train.csv")))
    for row in rows:
        row["wav"] = str(bad)
    path = tmp_path / "train.csv"
    with open(path, "w", newline="") as dst:
        writer = csv.DictWriter(dst, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    proc = run_recipe(f"--data_folder={trained['corpus']}", f"--output_folder={tmp_path / 'o'}",
                      f"--train_annotation={path}", "--number_of_epochs=1", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert f"audio file '{bad}' cannot be decoded" in out and "(row " in out


def test_unknown_yaml_key_is_named(tmp_path):
    proc = run_recipe(f"--output_folder={tmp_path}", "--numer_of_epochs=1", check=False)
    assert proc.returncode != 0 and "Override 'numer_of_epochs' not found" in proc.stdout + proc.stderr


def test_rows_without_a_face_train_without_distillation_and_are_counted(trained, tmp_path):
    rows = list(csv.DictReader(open(trained["corpus"] / "prep" / "train.csv")))
    speaker = rows[0]["spk_id"]
    blank = sum(r["spk_id"] == speaker for r in rows)
    for row in rows:
        if row["spk_id"] == speaker:
            row["face"] = ""
    path = tmp_path / "train.csv"
    with open(path, "w", newline="") as dst:
        writer = csv.DictWriter(dst, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    run_recipe(f"--data_folder={trained['corpus']}", f"--output_folder={tmp_path / 'o'}",
               f"--train_annotation={path}", "--number_of_epochs=1")
    log = (tmp_path / "o" / "train_log.txt").read_text()
    # Each epoch sees every utterance about once; rows of that speaker are counted.
    count = int(float(log.split("train no_teacher: ")[1].split(" ")[0].rstrip(",")))
    assert 1 <= count <= 2 * blank


def test_face_augmentation_runs_the_teacher_online(trained, tmp_path):
    out = tmp_path / "aug"
    run_recipe(f"--data_folder={trained['corpus']}", f"--output_folder={out}",
               "--number_of_epochs=1", "--face_augment=faces")
    assert "train soft_feature" in (out / "train_log.txt").read_text()
    assert not (out / "teacher_cache").exists()
