"""Speaker evaluation: the 10x10 crop score, cached embeddings, noisy conditions, reports, bad input,
and the recipe end to end (train -> evaluate -> compare -> plots)."""

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from speechbrain.utils.metric_stats import EER as sb_eer
from speechbrain.utils.metric_stats import minDCF as sb_min_dcf

from speechbrain_xmkd.audio import AudioError
from speechbrain_xmkd.evaluation import SpeakerEvaluator
from speechbrain_xmkd.noise import NoisePicker
from speechbrain_xmkd.reports import compare_markdown
from speechbrain_xmkd.trials import TrialSet, read_cnceleb_trials, read_voxceleb_trials
from speechbrain_xmkd.verification import read_scores, reduce_crops, score_trial_set

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "VoxCeleb"
YAML = RECIPE / "hparams" / "synthetic_xmkd.yaml"


def cosine(u, v):
    return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def brute_force_score(enrol_crops, test_crops):
    """Mean cosine over every (enrol crop, test crop) pair, utterance by utterance, in Python."""
    per_utterance = []
    for crops in enrol_crops:
        pairs = [cosine(a, b) for a in crops for b in test_crops]
        per_utterance.append(sum(pairs) / len(pairs))
    return sum(per_utterance) / len(per_utterance)


def independent_metrics(scores_file):
    """EER (fraction) and normalised minDCF from a scores file, with SpeechBrain's own functions."""
    labels, scores = [], []
    for line in Path(scores_file).read_text().splitlines():
        _, _, label, score = line.split()
        labels.append(int(label))
        scores.append(float(score))
    scores, labels = torch.tensor(scores), torch.tensor(labels)
    eer, _ = sb_eer(scores[labels == 1], scores[labels == 0])
    dcf, _ = sb_min_dcf(scores[labels == 1], scores[labels == 0], c_miss=1.0, c_fa=1.0, p_target=0.01)
    return float(eer), float(dcf) / 0.01, len(labels)


def test_crop_score_equals_the_double_loop():
    generator = torch.Generator().manual_seed(0)
    crops = torch.randn(4, 10, 7, generator=generator) + 0.3  # [U, 10 crops, D]
    means = reduce_crops(crops)
    index = {f"u{i}": i for i in range(4)}
    trial_set = TrialSet("t", [(1, "u0", "u1"), (0, "u2", "u3"), (0, "m", "u3")],
                         {"u0": ("u0",), "u2": ("u2",), "m": ("u0", "u1", "u2")}, "/")
    scores, labels = score_trial_set(trial_set, index, means, index, means)
    as_list = crops.tolist()
    assert scores[0] == pytest.approx(brute_force_score([as_list[0]], as_list[1]), abs=1e-6)
    assert scores[1] == pytest.approx(brute_force_score([as_list[2]], as_list[3]), abs=1e-6)
    # An enrolment model of three utterances (CN-Celeb): every enrol crop x test crop pair.
    assert scores[2] == pytest.approx(brute_force_score(as_list[:3], as_list[3]), abs=1e-6)
    assert labels.tolist() == [1, 0, 0]


# ---------------------------------------------------------------------------
# SpeakerEvaluator on a tiny generated corpus with a stand-in embedding model


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "wav"
    utts = []
    for s in range(4):
        for u in range(2):
            rel = f"id{s}/vid{u}/0000{u}.wav"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            t = np.arange(int(16000 * (0.3 + 0.1 * u))) / 16000  # the 0.3 s files are tiled
            wav = 0.2 * np.sin(2 * np.pi * (150 + 60 * s) * t) + 0.02 * rng.standard_normal(len(t))
            soundfile.write(root / rel, wav.astype("float32"), 16000)
            utts.append(rel)
    trials = [(1, utts[2 * s], utts[2 * s + 1]) for s in range(4)]
    trials += [(0, utts[2 * s], utts[(2 * s + 3) % 8]) for s in range(4)]
    trials += [(0, utts[2 * s + 1], utts[(2 * s + 4) % 8]) for s in range(4)]
    list_file = tmp_path / "trials.txt"
    list_file.write_text("".join(f"{y} {a} {b}\n" for y, a, b in trials))
    noise = tmp_path / "noise"
    noise.mkdir()
    soundfile.write(noise / "n.wav", (0.1 * rng.standard_normal(5000)).astype("float32"), 16000)
    ckpt = tmp_path / "out" / "save" / "CKPT+1"
    ckpt.mkdir(parents=True)
    (ckpt / "CKPT.yaml").write_text("ErrorRate: 0.5\nend-of-epoch: true\n")
    torch.save({"w": torch.ones(3)}, ckpt / "embedding_model.ckpt")
    return {"root": root, "list": list_file, "noise": noise, "ckpt": ckpt, "out": tmp_path / "out", "utts": utts}


class CountingModel:
    """A fixed random projection of the spectrum; counts the crops it embeds."""

    def __init__(self):
        self.rows = 0
        self.weight = torch.randn(257, 16, generator=torch.Generator().manual_seed(0))

    def __call__(self, wavs):
        self.rows += wavs.shape[0]
        spectrum = torch.fft.rfft(wavs, n=512).abs()
        return torch.log1p(spectrum) @ self.weight


def evaluator_for(corpus, model, n_crops=3):
    return SpeakerEvaluator(model, corpus["out"], checkpoint=str(corpus["ckpt"]), crop_seconds=0.4,
                            n_crops=n_crops, batch_size=3)


def test_evaluator_scores_caches_and_rebuilds(corpus, caplog):
    trial_set = read_voxceleb_trials(corpus["list"], corpus["root"], "tiny")
    model = CountingModel()
    noise = NoisePicker(corpus["noise"], seed=0)
    results = evaluator_for(corpus, model).evaluate(trial_set, noise, [5])
    # Every utterance embedded once clean; only the test side again with noise.
    assert model.rows == 3 * (len(corpus["utts"]) + len(trial_set.test_utterances))
    for condition in ("clean", "noise5"):
        entry = results[condition]
        eer, dcf, count = independent_metrics(corpus["out"] / "scores" / f"tiny_{condition}.txt")
        assert entry["trials"] == count == 12
        assert entry["eer"] == pytest.approx(eer, abs=1e-6)
        assert entry["eer_percent"] == pytest.approx(100 * eer, abs=1e-4)
        assert entry["min_dcf"] == pytest.approx(dcf, abs=1e-5)
    assert results["clean"]["tiled"] == 4 and results["noise5"]["delta_db"] == 5.0

    # Noisy condition: clean enrolment vectors, noisy test vectors.
    cache = corpus["out"] / "embeddings" / "CKPT+1"
    clean = torch.load(cache / "tiny_clean.pt", weights_only=True)
    noisy = torch.load(cache / "tiny_noise5.pt", weights_only=True)
    clean_rows = {u: i for i, u in enumerate(json.loads((cache / "tiny_clean.json").read_text())["utterances"])}
    noisy_rows = {u: i for i, u in enumerate(json.loads((cache / "tiny_noise5.json").read_text())["utterances"])}
    assert sorted(noisy_rows) == trial_set.test_utterances
    _, noisy_scores = read_scores(corpus["out"] / "scores" / "tiny_noise5.txt")
    expected = [float(clean[clean_rows[a]] @ noisy[noisy_rows[b]]) for _, a, b in trial_set.trials]
    assert noisy_scores == pytest.approx(expected, abs=2e-6)

    # Same checkpoint and protocol: nothing is embedded again.
    again = CountingModel()
    evaluator_for(corpus, again).evaluate(trial_set, noise, [5])
    assert again.rows == 0
    # A new checkpoint under the same name: rebuilt, with a log line, never reused.
    torch.save({"w": torch.zeros(3)}, corpus["ckpt"] / "embedding_model.ckpt")
    rebuilt = CountingModel()
    with caplog.at_level(logging.INFO, logger="speechbrain_xmkd.evaluation"):
        evaluator_for(corpus, rebuilt).evaluate(trial_set)
    assert rebuilt.rows == 3 * len(corpus["utts"])
    assert "rebuilt: key mismatch" in caplog.text
    # A protocol change (crops) is a key change too.
    other = CountingModel()
    evaluator_for(corpus, other, n_crops=2).evaluate(trial_set)
    assert other.rows == 2 * len(corpus["utts"])


def test_results_json_keeps_one_checkpoint(corpus):
    evaluator = evaluator_for(corpus, CountingModel())
    evaluator.update_results({"a": {"clean": {"eer": 0.1, "checkpoint": "CKPT+1"}}, "matching": {"checkpoint": "CKPT+1"}})
    path = corpus["out"] / "results.json"
    data = json.loads(path.read_text())
    data["old"] = {"clean": {"eer": 0.3, "checkpoint": "CKPT+0"}}
    path.write_text(json.dumps(data))
    merged = evaluator.update_results({"a": {"noise5": {"eer": 0.2, "checkpoint": "CKPT+1"}}})
    assert sorted(merged) == ["a", "matching"] and sorted(merged["a"]) == ["clean", "noise5"]


def test_missing_file_names_list_and_line_or_is_skipped(corpus):
    lines = corpus["list"].read_text().splitlines()
    lines.insert(3, "0 id0/vid0/00000.wav id9/gone/00001.wav")
    corpus["list"].write_text("\n".join(lines) + "\n")
    with pytest.raises(FileNotFoundError, match=r"trials.txt, line 4: audio file '.*id9/gone/00001.wav' does not exist"):
        read_voxceleb_trials(corpus["list"], corpus["root"])
    trial_set = read_voxceleb_trials(corpus["list"], corpus["root"], "tiny", skip_missing=True)
    assert trial_set.skipped == 1 and len(trial_set.trials) == 12
    results = evaluator_for(corpus, CountingModel()).evaluate(trial_set)
    assert results["clean"]["skipped_missing"] == 1


@pytest.mark.parametrize("kind", ["rate", "silent", "empty"])
def test_bad_audio_is_an_error_naming_the_file(corpus, kind):
    bad = corpus["root"] / corpus["utts"][3]
    if kind == "rate":
        soundfile.write(bad, np.ones(8000, dtype="float32") * 0.1, 8000)
        message = "has sample rate 8000, expected 16000"
    elif kind == "silent":
        soundfile.write(bad, np.zeros(8000, dtype="float32"), 16000)
        message = "is silent"
    else:
        soundfile.write(bad, np.zeros(0, dtype="float32"), 16000)
        message = "is empty"
    trial_set = read_voxceleb_trials(corpus["list"], corpus["root"], "tiny")
    with pytest.raises(AudioError, match=f"audio file '{bad}' {message}"):
        evaluator_for(corpus, CountingModel()).evaluate(trial_set)


def test_cnceleb_protocol_and_its_errors(tmp_path):
    lists = tmp_path / "CN-Celeb" / "eval" / "lists"
    lists.mkdir(parents=True)
    for rel in ("enroll/a1.flac", "enroll/a2.flac", "test/x.flac", "test/y.flac"):
        (lists.parent / rel).parent.mkdir(exist_ok=True)
        soundfile.write(lists.parent / rel, np.ones(100, dtype="float32") * 0.1, 16000)
    (lists / "enroll.lst").write_text("id1-enroll enroll/a1.flac\nid1-enroll enroll/a2.flac\n")
    (lists / "trials.lst").write_text("id1-enroll test/x.flac 1\nid1-enroll test/y.flac 0\n")
    trial_set = read_cnceleb_trials(tmp_path / "CN-Celeb")
    assert trial_set.enrol == {"id1-enroll": ("enroll/a1.flac", "enroll/a2.flac")}
    assert trial_set.trials == [(1, "id1-enroll", "test/x.flac"), (0, "id1-enroll", "test/y.flac")]
    assert trial_set.audio_root == str(lists.parent)
    (lists / "trials.lst").write_text("id1-enroll test/x.flac 1\nid2-enroll test/y.flac 0\n")
    with pytest.raises(ValueError, match=r"trials.lst, line 2: enrolment model 'id2-enroll' is not in"):
        read_cnceleb_trials(tmp_path / "CN-Celeb")
    (lists / "trials.lst").write_text("id1-enroll test/x.flac\n")
    with pytest.raises(ValueError, match=r"trials.lst, line 1: expected 'enroll_id test_path label'"):
        read_cnceleb_trials(tmp_path / "CN-Celeb")
    (lists / "trials.lst").write_text("id1-enroll test/x.flac 1\nid1-enroll test/z.flac 0\n")
    with pytest.raises(FileNotFoundError, match=r"trials.lst, line 2: audio file '.*test/z.flac' does not exist"):
        read_cnceleb_trials(tmp_path / "CN-Celeb")
    assert read_cnceleb_trials(tmp_path / "CN-Celeb", skip_missing=True).skipped == 1
    with pytest.raises(FileNotFoundError, match="enroll.lst"):
        read_cnceleb_trials(tmp_path)


def test_compare_table_bolds_the_best_value_per_column():
    base = {"vox1_o": {"clean": {"eer_percent": 1.71, "min_dcf": 0.205}, "noise5": {"eer_percent": 5.61, "delta_db": 5.0}},
            "vox1_h": {"clean": {"eer": 0.0332}}}
    ours = {"vox1_o": {"clean": {"eer_percent": 1.51, "min_dcf": 0.178}, "noise5": {"eer_percent": 4.97, "delta_db": 5.0}},
            "vox1_h": {"clean": {"eer": 0.0321}}}
    table = compare_markdown(["ResNet34", "Ours"], [base, ours]).splitlines()
    assert table[0] == "| method | EER (O) | minDCF (O) | EER (H) | EER (Δdb = 5) |"
    assert table[2] == "| ResNet34 | 1.71% | 0.205 | 3.32% | 5.61% |"
    assert table[3] == "| Ours | **1.51%** | **0.178** | **3.21%** | **4.97%** |"


# ---------------------------------------------------------------------------
# The recipe end to end


TINY = [
    "--n_train_speakers=8", "--out_n_neurons=8", "--n_test_speakers=4", "--sessions_per_speaker=2",
    "--utts_per_session=2", "--speakers_per_batch=4", "--teacher_epochs=2",
    "--channels=[16,16,16,16,48]", "--emb_dim=32", "--test_n_crops=2", "--epoch_eer_every=1",
]


def run(script, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(script), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"{script.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    common = [YAML, f"--data_folder={root / 'corpus'}", f"--output_folder={root / 'out'}", *TINY]
    run(RECIPE / "train.py", *common, "--number_of_epochs=1")
    extra = ["--noise_levels_db=[5]", "--matching_triples=300", "--noprogressbar"]
    first = run(RECIPE / "evaluate.py", *common, *extra)
    second = run(RECIPE / "evaluate.py", *common, *extra)
    return {"root": root, "out": root / "out", "first": first, "second": second}


def test_recipe_results_match_the_scores_files(evaluated):
    out = evaluated["out"]
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["synthetic"]) == ["clean", "noise5"]
    trials = (evaluated["root"] / "corpus" / "veri_test_synthetic.txt").read_text().splitlines()
    for condition, entry in results["synthetic"].items():
        eer, dcf, count = independent_metrics(out / "scores" / f"synthetic_{condition}.txt")
        assert entry["trials"] == count == len(trials)
        assert entry["eer"] == pytest.approx(eer, abs=1e-6)
        assert entry["eer_percent"] == pytest.approx(100 * entry["eer"])
        assert entry["min_dcf"] == pytest.approx(dcf, abs=1e-5)
    assert results["synthetic"]["noise5"]["delta_db"] == 5.0
    matching = results["matching"]
    assert matching["chance_percent"] == 50.0
    for key in ("AF_O", "FA_O", "AF_H", "FA_H"):
        assert 0.0 <= matching[key]["accuracy_percent"] <= 100.0 and matching[key]["triples"] == 300
    table = (out / "results.md").read_text()
    assert "EER (Δdb = 5)" in table and "A-F (H)" in table


def test_recipe_caches_embeddings_per_checkpoint(evaluated):
    (ckpt,) = [p.name for p in (evaluated["out"] / "save").glob("CKPT+*")]
    folder = evaluated["out"] / "embeddings" / ckpt
    for name in ("synthetic_clean", "synthetic_noise5"):
        assert isinstance(torch.load(folder / f"{name}.pt", weights_only=True), torch.Tensor)
        assert json.loads((folder / f"{name}.json").read_text())["key"]
    # train.py cached the clean set; the first evaluation embedded only the
    # noisy test side, the second nothing at all.
    assert "synthetic_clean: loaded" in evaluated["first"]
    assert "synthetic (clean): embedding" not in evaluated["first"]
    assert "synthetic (noise5): embedding" in evaluated["first"]
    assert "utterances x" not in evaluated["second"]


def test_train_log_has_the_curves_inputs(evaluated):
    log = (evaluated["out"] / "train_log.txt").read_text()
    assert "train ErrorRate" in log and "valid EER" in log


def test_compare_and_plots_write_their_files(evaluated, tmp_path):
    out = evaluated["out"]
    table = run(RECIPE / "compare.py", out, out, "--names", "a,b", "--out", tmp_path / "table.md")
    assert (tmp_path / "table.md").read_text().strip() in table
    assert "| a |" in table and "EER (synthetic)" in table
    run(RECIPE / "plots.py", "all", out, "--out_folder", tmp_path / "plots", "--tsne_iter", "250")
    for name in ("det", "hist", "tsne", "curves"):
        png = tmp_path / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
