"""Sharing a trained student: export, load with SpeechBrain offline, push (up to the network), CLI."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from speechbrain_xmkd import cli, hub

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "VoxCeleb"
TINY = [
    "--n_train_speakers=8", "--out_n_neurons=8", "--n_test_speakers=4", "--sessions_per_speaker=2",
    "--utts_per_session=2", "--number_of_epochs=1", "--speakers_per_batch=4", "--teacher_epochs=2",
    "--channels=[16,16,16,16,48]", "--emb_dim=32", "--test_n_crops=2",
]
EXPORTED = {
    "hyperparams.yaml", "embedding_model.ckpt", "classifier.ckpt", "mean_var_norm.ckpt",
    "mean_var_norm_emb.ckpt", "label_encoder.txt", "label_encoder.ckpt", "README.md",
}


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(PYTHONPATH=str(ROOT), **extra)
    return env


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    out = root / "run"
    proc = subprocess.run(
        [sys.executable, str(RECIPE / "train.py"), str(RECIPE / "hparams" / "synthetic_xmkd.yaml"), *TINY,
         f"--data_folder={root / 'corpus'}", f"--output_folder={out}"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    # The embedding normaliser is fit on a known handful of training rows (CPU time).
    lines = (root / "corpus" / "prep" / "train.csv").read_text().splitlines()
    subset = root / "train_subset.csv"
    subset.write_text("\n".join(lines[:4]) + "\n")
    model = hub.export_speaker_model(out, root / "model", train_annotation=subset, progressbar=False)
    return {"root": root, "corpus": root / "corpus", "out": out, "model": model, "norm_rows": subset}


@pytest.fixture(scope="module")
def trained(run):
    """The training-time student, built from the run's own yaml and checkpointer."""
    from hyperpyyaml import load_hyperpyyaml

    sys.path.insert(0, str(RECIPE))  # the yaml names recipe-local functions
    try:
        with open(run["out"] / "hyperparams.yaml", encoding="utf-8") as handle:
            hparams = load_hyperpyyaml(handle)
    finally:
        sys.path.remove(str(RECIPE))
    hparams["checkpointer"].recover_if_possible(min_key="ErrorRate")
    for name in ("compute_features", "mean_var_norm", "embedding_model", "classifier"):
        hparams[name].eval()

    @torch.no_grad()
    def embed(wav):
        wav = torch.as_tensor(wav, dtype=torch.float32).unsqueeze(0)
        lens = torch.ones(1)
        feats = hparams["mean_var_norm"](hparams["compute_features"](wav), lens)
        return hparams["embedding_model"](feats, lens).reshape(-1)

    return {"hparams": hparams, "embed": embed}


def _wav(path):
    return soundfile.read(str(path), dtype="float32")[0]


def _labels(path):
    lines = Path(path).read_text().splitlines()
    return [line.split(" => ")[0].strip("'") for line in lines if " => " in line and "starting_index" not in line]


def test_export_holds_the_student_only(run):
    model, out = run["model"], run["out"]
    assert {p.name for p in model.iterdir()} == EXPORTED
    text = "\n".join(l for l in (model / "hyperparams.yaml").read_text().splitlines() if not l.startswith("#"))
    for absent in ("distiller", "projection", "teacher", "paths:", "pretrained_path", "speechbrain/"):
        assert absent not in text, absent
    assert "!new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN" in text and "channels: [16, 16, 16, 16, 48]" in text
    ckpt = next((out / "save").glob("CKPT+*"))
    for name in ("embedding_model.ckpt", "classifier.ckpt"):
        exported = torch.load(model / name, weights_only=True)
        original = torch.load(ckpt / name, weights_only=True)
        assert exported.keys() == original.keys()
        assert all(torch.equal(exported[k], original[k]) for k in original)
    assert (model / "label_encoder.txt").read_bytes() == (out / "save" / "label_encoder.txt").read_bytes()
    card = (model / "README.md").read_text()
    eer = json.loads((out / "results.json").read_text())["synthetic"]["clean"]["eer"]
    for expected in ("arXiv:2507.16296", "Ravanelli", "SpeakerRecognition.from_hparams", f"{100 * eer:.2f}",
                     "| distillation method | feature |", "library_name: speechbrain"):
        assert expected in card, expected


def test_embedding_normaliser_is_the_mean_of_training_embeddings(run, trained):
    import csv

    with open(run["norm_rows"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    embeddings = []
    for row in rows:
        wav = _wav(row["wav"].replace("$data_root", str(run["corpus"])))[int(row["start"]) : int(row["stop"])]
        embeddings.append(trained["embed"](wav))
    stats = torch.load(run["model"] / "mean_var_norm_emb.ckpt", weights_only=True)
    assert stats["count"] == len(rows)
    torch.testing.assert_close(stats["glob_mean"], torch.stack(embeddings).mean(dim=0), atol=1e-5, rtol=0)


def test_speechbrain_loads_it_offline_in_a_fresh_process(run, trained):
    wavs = sorted((run["corpus"] / "wav").rglob("*.wav"), key=lambda p: soundfile.info(str(p)).frames)
    first, second = wavs[0], wavs[1]  # the shortest two: CPU time
    script = textwrap.dedent(f"""
        import json, sys
        from speechbrain.inference.speaker import SpeakerRecognition
        from speechbrain.inference.classifiers import EncoderClassifier
        model, save = {str(run["model"])!r}, {str(run["root"] / "sb")!r}
        verification = SpeakerRecognition.from_hparams(source=model, savedir=save + "/sr")
        score, decision = verification.verify_files({str(first)!r}, {str(second)!r})
        embs = [verification.encode_batch(verification.load_audio(p).unsqueeze(0)).reshape(-1).tolist()
                for p in ({str(first)!r}, {str(second)!r})]
        classifier = EncoderClassifier.from_hparams(source=model, savedir=save + "/ec")
        label = classifier.classify_file({str(first)!r})[3][0]
        print(json.dumps({{"score": float(score), "decision": bool(decision), "embs": embs, "label": label}}))
    """)
    # Offline, and any connection attempt would fail: nothing may reach the Hub.
    env = _env(HF_HUB_OFFLINE="1", HF_HOME=str(run["root"] / "hf"), HTTP_PROXY="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9")
    proc = subprocess.run([sys.executable, "-c", script], cwd=run["root"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    reference = [trained["embed"](_wav(p)) for p in (first, second)]
    for got, expected in zip(result["embs"], reference):
        torch.testing.assert_close(torch.tensor(got), expected, atol=1e-5, rtol=0)
    cosine = float(torch.nn.functional.cosine_similarity(reference[0], reference[1], dim=0))
    assert result["score"] == pytest.approx(cosine, abs=1e-5)
    assert result["decision"] == (cosine > 0.25)
    with torch.no_grad():
        logits = trained["hparams"]["classifier"](reference[0].reshape(1, 1, -1)).reshape(-1)
    labels = _labels(run["model"] / "label_encoder.txt")
    assert result["label"] == labels[int(logits.argmax())]


def test_push_without_token_stops_before_exporting(run, tmp_path):
    target = tmp_path / "model"
    before = sorted(p.relative_to(run["out"]) for p in run["out"].rglob("*"))
    proc = subprocess.run(
        [sys.executable, "-m", "speechbrain_xmkd.export", str(run["out"]), "--out", str(target),
         "--push-to-hub", "someone/student"],
        cwd=tmp_path, env=_env(HF_HOME=str(tmp_path / "hf")), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "hf auth login" in proc.stderr and "HF_TOKEN" in proc.stderr
    assert not target.exists() and not (tmp_path / "hf").exists()
    assert sorted(p.relative_to(run["out"]) for p in run["out"].rglob("*")) == before


def test_push_creates_the_repo_and_uploads_the_folder(run, monkeypatch):
    calls = []

    class FakeApi:
        def create_repo(self, **kwargs):
            calls.append(("create_repo", kwargs))
            return "https://huggingface.co/someone/student"

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))

    url = hub.push_to_hub(run["model"], "someone/student", private=True, api=FakeApi())
    assert url == "https://huggingface.co/someone/student"
    assert calls[0] == ("create_repo", {"repo_id": "someone/student", "repo_type": "model",
                                        "private": True, "exist_ok": True})
    assert calls[1][0] == "upload_folder" and calls[1][1]["folder_path"] == str(run["model"])
    # A token alone is not enough in offline mode: refused before any request.
    import huggingface_hub.constants

    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PermissionError, match="HF_HUB_OFFLINE"):
        hub.require_hub_token()


def test_not_a_training_run_names_what_is_missing(run, tmp_path):
    with pytest.raises(FileNotFoundError, match="no hyperparams.yaml"):
        hub.export_speaker_model(tmp_path, tmp_path / "m")
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "hyperparams.yaml").write_text((run["out"] / "hyperparams.yaml").read_text())
    with pytest.raises(FileNotFoundError, match=r"no checkpoint \(CKPT\+\* folder\)"):
        hub.export_speaker_model(fake, tmp_path / "m")
    (fake / "hyperparams.yaml").write_text("seed: 1\n")
    with pytest.raises(ValueError, match="compute_features, mean_var_norm, embedding_model"):
        hub.export_speaker_model(fake, tmp_path / "m")
    with pytest.raises(FileExistsError, match="overwrite"):
        hub.export_speaker_model(run["out"], run["model"])


def test_a_chosen_student_is_written_as_its_own_class(tmp_path):
    """resnet34_xmkd.yaml picks its student with select(...): the export names the class itself."""
    from hyperpyyaml import load_hyperpyyaml, resolve_references

    from speechbrain_xmkd.run_folder import concrete_node, dump_tagged_yaml, read_tagged_yaml

    overrides = {"data_folder": "/d", "voxceleb1_folder": "/v", "teacher_weights": "/w.pth", "student": "xvector"}
    with open(RECIPE / "hparams" / "resnet34_xmkd.yaml", encoding="utf-8") as handle:
        (tmp_path / "hyperparams.yaml").write_text(resolve_references(handle, overrides).getvalue())
    node = concrete_node(read_tagged_yaml(tmp_path / "hyperparams.yaml")["embedding_model"], "embedding_model")
    text = dump_tagged_yaml({"embedding_model": node})
    assert text.startswith("embedding_model: !new:speechbrain.lobes.models.Xvector.Xvector\n")
    from speechbrain.lobes.models.Xvector import Xvector

    model = load_hyperpyyaml(text)["embedding_model"]  # SpeechBrain alone builds it
    assert isinstance(model, Xvector) and model.blocks[-1].w.out_features == 512


def test_cli_embeds_a_folder_and_verifies_two_files(run, tmp_path, capsys):
    folder = tmp_path / "wavs"
    rng = np.random.default_rng(0)
    names = ["b/2.wav", "a/1.wav", "a/sub/3.WAV", "c.wav", "b/1.wav"]
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(folder / name), 0.1 * rng.standard_normal(8000).astype("float32"), 16000)
    (folder / "notes.txt").write_text("not audio")
    out = tmp_path / "emb.npy"
    assert cli.embed([str(folder), "--model", str(run["model"]), "--out", str(out), "--batch_size", "2"]) == 0
    embeddings = np.load(out)
    index = (tmp_path / "emb.index.txt").read_text().splitlines()
    assert embeddings.shape == (5, 32) and index == sorted(names)
    # Same-length files: batched rows equal SpeechBrain's one-file encode_batch.
    model = cli.load_model(run["model"], "classifier")
    for row, name in zip(embeddings, index):
        single = model.encode_batch(model.load_audio(str(folder / name)).unsqueeze(0)).reshape(-1).numpy()
        np.testing.assert_allclose(row, single, atol=1e-4)

    capsys.readouterr()
    assert cli.verify([str(folder / "a/1.wav"), str(folder / "c.wav"), "--model", str(run["model"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    a, c = embeddings[index.index("a/1.wav")], embeddings[index.index("c.wav")]
    cosine = float(a @ c / np.linalg.norm(a) / np.linalg.norm(c))
    assert lines[0].startswith("score: ") and float(lines[0].split()[1]) == pytest.approx(cosine, abs=1e-4)
    assert lines[1].startswith("decision: ")
    cli.verify([str(folder / "a/1.wav"), str(folder / "c.wav"), "--model", str(run["model"]), "--threshold", "2"])
    assert "different speakers (threshold 2.000000)" in capsys.readouterr().out

    setup = (ROOT / "setup.py").read_text()
    assert '"xmkd-verify=speechbrain_xmkd.cli:verify"' in setup and '"xmkd-embed=speechbrain_xmkd.cli:embed"' in setup


def test_cli_errors_name_the_problem(run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (cli.embed, [str(empty), "--model", str(tmp_path / "none"), "--out", "e.npy"], "model folder"),
        (cli.embed, [str(empty), "--model", str(run["model"]), "--out", "e.npy"], "no .wav files under"),
        (cli.verify, [str(tmp_path / "x.wav"), str(tmp_path / "x.wav"), "--model", str(run["model"])],
         "x.wav' does not exist"),
    ]
    bad = tmp_path / "bad" / "broken.wav"
    bad.parent.mkdir()
    bad.write_bytes(b"RIFF not really a wav")
    cases.append((cli.embed, [str(bad.parent), "--model", str(run["model"]), "--out", "e.npy"], str(bad)))
    for command, argv, message in cases:
        with pytest.raises(SystemExit) as stop:
            command(argv)
        assert stop.value.code == 1
        assert message in capsys.readouterr().err


def test_image_student_round_trip(tmp_path):
    cv2 = pytest.importorskip("cv2")
    torchvision = pytest.importorskip("torchvision")

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3).eval()
    prep = {"resize": 32, "crop": 32, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    names = ["apple", "bicycle", "cloud"]
    folder = hub.export_image_model(net, tmp_path / "img", names, "torchvision.models.resnet18", prep,
                                    architecture_kwargs={"num_classes": 3})
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "classes.txt", "model.ckpt", "model.json",
                                                         "preprocessing.json"]
    assert (folder / "classes.txt").read_text().splitlines() == names

    rgb = np.random.default_rng(1).integers(0, 256, size=(32, 40, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    assert cv2.imwrite(str(path), rgb[:, :, ::-1])  # OpenCV writes BGR
    label, prob = hub.ImageClassifier.from_folder(folder).classify_file(path)

    # By hand: shorter side already 32, centre crop 32 of 40 columns, standardise.
    crop = rgb[:, 4:36].astype(np.float32) / 255.0
    x = (crop - np.array(prep["mean"], dtype=np.float32)) / np.array(prep["std"], dtype=np.float32)
    with torch.no_grad():
        probs = torch.softmax(net(torch.from_numpy(x).permute(2, 0, 1).unsqueeze(0)), dim=-1)[0]
    assert label == names[int(probs.argmax())]
    assert prob == pytest.approx(float(probs.max()), abs=1e-5)

    with pytest.raises(ValueError, match="3 outputs but 2 class names"):
        hub.export_image_model(net, tmp_path / "img2", names[:2], "torchvision.models.resnet18", prep,
                               architecture_kwargs={"num_classes": 3})
    with pytest.raises(ValueError, match="cannot be read or decoded"):
        hub.ImageClassifier.from_folder(folder).classify_file(tmp_path / "missing.png")


def test_image_run_exports_its_student(tmp_path):
    """A run of the image recipe (its real yaml, a fabricated checkpoint) goes through export_run."""
    from hyperpyyaml import resolve_references
    from speechbrain.dataio.encoder import CategoricalEncoder

    yaml_path = ROOT / "recipes" / "CIFAR100" / "hparams" / "synthetic_image_xmkd.yaml"
    if not yaml_path.is_file():
        pytest.skip("no image recipe in this tree")
    cv2 = pytest.importorskip("cv2")
    from speechbrain_xmkd.image_models import CompactResNet

    run = tmp_path / "run"
    ckpt = run / "save" / "CKPT+2026-01-01+00-00-00+00"
    ckpt.mkdir(parents=True)
    with open(yaml_path, encoding="utf-8") as handle:  # what sb.create_experiment_directory writes
        resolved = resolve_references(handle, {"output_folder": str(run)}).getvalue()
    (run / "hyperparams.yaml").write_text(f"# Generated 2026-01-01 from:\n# {yaml_path}\n# yamllint disable\n{resolved}")
    torch.manual_seed(0)
    trunk, head = CompactResNet(widths=[16, 32, 64, 128], blocks=[1, 1, 1, 1]).eval(), torch.nn.Linear(128, 27)
    torch.save(trunk.state_dict(), ckpt / "embedding_model.ckpt")
    torch.save(head.state_dict(), ckpt / "classifier.ckpt")
    (ckpt / "CKPT.yaml").write_text("ErrorRate: 0.5\nend-of-epoch: true\nepoch: 3\nunixtime: 1767225600.0\n")
    names = [f"class{i:02d}" for i in range(27)]
    encoder = CategoricalEncoder()
    encoder.update_from_iterable(names)
    encoder.save(run / "save" / "label_encoder.txt")

    folder = hub.export_run(run, tmp_path / "model")
    assert json.loads((folder / "preprocessing.json").read_text()) == {
        "resize": 32, "crop": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    assert (folder / "classes.txt").read_text().splitlines() == names
    assert "| distillation method | classifier |" in (folder / "README.md").read_text()

    rgb = np.random.default_rng(2).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "x.png"), rgb[:, :, ::-1])
    label, prob = hub.ImageClassifier.from_folder(folder).classify_file(tmp_path / "x.png")
    x = torch.from_numpy((rgb.astype(np.float32) / 255.0 - 0.5) / 0.25).permute(2, 0, 1).unsqueeze(0)
    with torch.no_grad():
        probs = torch.softmax(head(trunk(x)), dim=-1)[0]
    assert label == names[int(probs.argmax())] and prob == pytest.approx(float(probs.max()), abs=1e-5)
