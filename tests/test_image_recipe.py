"""The text-to-image recipe: data loaders, metrics, and a tiny end-to-end run with resume."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "CIFAR100"
TRAIN = RECIPE / "train.py"
YAML = RECIPE / "hparams" / "synthetic_image_xmkd.yaml"
sys.path.append(str(RECIPE))

from image_prepare import load_cifar100, load_tiny_imagenet, prepare_image_data, read_image  # noqa: E402
from synthetic_images import prepare_synthetic_images, write_synthetic_images  # noqa: E402

from speechbrain_xmkd import ProjectionHead  # noqa: E402
from speechbrain_xmkd.classification import class_text_embeddings, matching_accuracy, topk_accuracy  # noqa: E402

# 2 shapes x 2 colours x 1 texture = 4 classes, 8 + 4 images each, hashed teacher.
TINY = [
    "--shapes=[circle,square]", "--colours=[red,blue]", "--textures=[plain]",
    "--train_per_class=8", "--test_per_class=4", "--batch_size=8", "--emb_dim=16",
    "--teacher_kind=hashed", "--method=feature", "--quality=teacher", "--noprogressbar",
]


def _recipe_train():
    """recipes/CIFAR100/train.py as a module (the VoxCeleb recipe also has a train.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cifar100_train", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_recipe(*args, check=True):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(TRAIN), str(YAML), *TINY, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("image_recipe")
    data, out = root / "data", root / "out"
    first = run_recipe(f"--data_folder={data}", f"--output_folder={out}", "--number_of_epochs=1")
    caches = sorted((data / "teacher_cache").rglob("prompt_embeddings.pt"))
    stamps = {p: p.stat().st_mtime_ns for p in caches}
    first_results = json.loads((out / "results.json").read_text())
    second = run_recipe(f"--data_folder={data}", f"--output_folder={out}", "--number_of_epochs=2")
    return {"data": data, "out": out, "first": first, "second": second, "stamps": stamps,
            "first_results": first_results}


# ---------------------------------------------------------------------------
# End to end
def test_train_resume_and_named_terms(trained):
    log = (trained["out"] / "train_log.txt").read_text()
    epochs = [line for line in log.splitlines() if line.startswith("epoch:")]
    assert [line.split(",")[0] for line in epochs] == ["epoch: 1", "epoch: 2"]  # epoch 1 not redone
    for term in ("train task", "train soft_feature", "valid ErrorRate", "lr"):
        assert term in epochs[1]
    assert "Loading a checkpoint" in trained["second"].stdout + trained["second"].stderr
    assert "test top1" in log and "test matching" in log


def test_results_json_after_each_run(trained):
    results = json.loads((trained["out"] / "results.json").read_text())
    assert trained["first_results"]["epoch"] == 1
    # Scored with the best checkpoint: the epoch of the lowest valid error.
    log = (trained["out"] / "train_log.txt").read_text().splitlines()
    errors = {int(l.split(",")[0].split()[1]): float(l.split("valid ErrorRate: ")[1].split()[0].rstrip(","))
              for l in log if l.startswith("epoch:")}
    assert errors[results["epoch"]] == min(errors.values())
    assert results["num_test"] == 16 and results["num_classes"] == 4
    assert 0.0 <= results["top1"] <= results["top5"] == 1.0  # 4 classes: top-5 is everything
    matching = results["matching"]
    assert matching["chance"] == pytest.approx(0.25) and matching["templates"] == 80
    assert 0.0 <= matching["accuracy"] <= 1.0
    assert results["run"]["method"] == "feature" and results["run"]["quality"] == "teacher"


def test_prompt_cache_reused_and_template_draws_checkpointed(trained):
    assert len(trained["stamps"]) == 1, "expected one prompt cache"
    for path, stamp in trained["stamps"].items():
        assert path.stat().st_mtime_ns == stamp, f"{path} was rebuilt on resume"
    ckpt = sorted((trained["out"] / "save").glob("CKPT+*"))[-1]
    state = torch.load(ckpt / "template_sampler.ckpt", weights_only=True)
    # 32 training images, batches of 8, 2 epochs: one draw per training batch.
    assert state["step"] == 8
    distiller = torch.load(ckpt / "distiller.ckpt", map_location="cpu", weights_only=True)
    assert any(k.startswith("projection.mlp") for k in distiller)
    assert int(distiller["weighter.num_batches_tracked"][0]) == 8


def test_num_classes_mismatch_is_named(trained, tmp_path):
    proc = run_recipe(f"--data_folder={trained['data']}", f"--output_folder={tmp_path}",
                      "--num_classes=5", "--number_of_epochs=1", check=False)
    assert proc.returncode != 0
    assert "lists 4 classes: pass --num_classes=4" in proc.stdout + proc.stderr


def test_corrupt_image_is_named_with_its_row(trained, tmp_path):
    image_train = _recipe_train()
    prep = trained["data"] / "prep"
    rows = (prep / "train.csv").read_text().splitlines()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    ident, _, label = rows[1].split(",")
    (tmp_path / "train.csv").write_text("\n".join([rows[0], f"{ident},{bad},{label}"] + rows[2:]) + "\n")
    hparams = {
        "data_folder": str(trained["data"]), "save_folder": str(tmp_path),
        "train_annotation": str(tmp_path / "train.csv"), "valid_annotation": str(prep / "valid.csv"),
        "test_annotation": str(prep / "test.csv"),
        "train_transform": torch.nn.Identity(), "test_transform": torch.nn.Identity(),
    }
    datasets = image_train.dataio_prep(hparams, image_train.read_classes(prep / "classes.json"))
    assert datasets["train"][1]["image"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match=rf"image '{bad}' \(listed in train.csv row {ident}\) could not be decoded"):
        datasets["train"][0]
    (tmp_path / "train.csv").write_text("\n".join([rows[0], f"{ident},{bad},no_such_class"]) + "\n")
    with pytest.raises(ValueError, match="line 2: label 'no_such_class' is not a class of classes.json"):
        image_train.dataio_prep(hparams, image_train.read_classes(prep / "classes.json"))
    (tmp_path / "classes.json").write_text(json.dumps([{"label": "a", "name": "a"}, {"label": "b", "name": " "}]))
    with pytest.raises(ValueError, match="class 'b' .* has no name"):
        image_train.read_classes(tmp_path / "classes.json")


# ---------------------------------------------------------------------------
# Loaders on tiny files in the official layouts
def _write_official_cifar(folder, images, labels, names):
    """Writes pickles like the Python-2 originals (bytes keys and names)."""
    root = folder / "cifar-100-python"
    root.mkdir(parents=True)
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    for split, sl in (("train", slice(0, 4)), ("test", slice(4, 6))):
        with open(root / split, "wb") as handle:
            pickle.dump({b"data": data[sl], b"fine_labels": labels[sl], b"coarse_labels": [0] * len(labels[sl])}, handle, protocol=2)
    with open(root / "meta", "wb") as handle:
        pickle.dump({b"fine_label_names": [n.encode() for n in names]}, handle, protocol=2)


def test_cifar_pickles_load_and_prepare(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    images[0, 0, 0] = (255, 0, 0)  # a red top-left pixel: the channel order is checked below
    labels, names = [0, 1, 2, 1, 0, 2], ["apple", "maple_tree", "sweet_pepper"]
    _write_official_cifar(tmp_path / "cifar", images, labels, names)

    loaded, got_labels, got_names = load_cifar100(tmp_path / "cifar", "train")
    assert np.array_equal(loaded, images[:4]) and got_labels == labels[:4] and got_names == names
    assert loaded[0, 0, 0].tolist() == [255, 0, 0]

    prep = tmp_path / "cifar" / "prep"
    info = prepare_image_data(tmp_path / "cifar", prep, valid_per_class=0)
    assert (info["train"], info["valid"], info["test"], info["classes"]) == (4, 2, 2, 3)
    classes = json.loads((prep / "classes.json").read_text())
    assert classes[1] == {"label": "maple_tree", "name": "maple tree"}
    rows = [r.split(",") for r in (prep / "train.csv").read_text().splitlines()[1:]]
    assert [r[2] for r in rows] == ["apple", "maple_tree", "sweet_pepper", "maple_tree"]
    assert rows[0][1].startswith("$data_root/")  # inside the data folder: it may move with it
    png = read_image(rows[0][1].replace("$data_root", str(tmp_path / "cifar")))
    assert np.array_equal(png, images[0])  # lossless, RGB
    assert (prep / "valid.csv").read_text() == (prep / "test.csv").read_text()
    # Same options: nothing rewritten.
    stamp = (prep / "train.csv").stat().st_mtime_ns
    prepare_image_data(tmp_path / "cifar", prep, valid_per_class=0)
    assert (prep / "train.csv").stat().st_mtime_ns == stamp


def test_synthetic_set_uses_the_cifar_format_and_is_deterministic(tmp_path):
    names = write_synthetic_images(tmp_path / "a", train_per_class=2, test_per_class=1, shapes=["circle", "cross"],
                                   colours=["red"], textures=["striped", "dotted"])
    assert names == ["red_striped_circle", "red_dotted_circle", "red_striped_cross", "red_dotted_cross"]
    write_synthetic_images(tmp_path / "b", train_per_class=2, test_per_class=1, shapes=["circle", "cross"],
                           colours=["red"], textures=["striped", "dotted"])
    a, la, na = load_cifar100(tmp_path / "a", "train")
    b, _, _ = load_cifar100(tmp_path / "b", "train")
    assert np.array_equal(a, b) and la == [0, 0, 1, 1, 2, 2, 3, 3] and na == names
    red = a[..., 0].astype(int) - a[..., 2].astype(int)
    assert red.max() > 100  # the shape is red
    with pytest.raises(ValueError, match="unknown colour"):
        write_synthetic_images(tmp_path / "c", colours=["mauve"])
    # A set re-rendered with other words into the same folder gets fresh lists.
    prepare_synthetic_images(tmp_path / "a", tmp_path / "a" / "prep", train_per_class=2, test_per_class=1,
                             shapes=["circle"], colours=["red"], textures=["plain"])
    prepare_synthetic_images(tmp_path / "a", tmp_path / "a" / "prep", train_per_class=2, test_per_class=1,
                             shapes=["circle"], colours=["red", "green"], textures=["plain"])
    classes = json.loads((tmp_path / "a" / "prep" / "classes.json").read_text())
    assert [c["name"] for c in classes] == ["red plain circle", "green plain circle"]


def _write_tiny_imagenet(root, words=None):
    root = root / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    words = words or {"n01443537": "goldfish, Carassius auratus", "n01629819": "European fire salamander, Salamandra salamandra"}
    (root / "words.txt").write_text("".join(f"{w}\t{n}\n" for w, n in words.items()) + "n99999999\tunused\n")
    for k, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(folder / f"{wnid}_{i}.JPEG"), np.full((64, 64, 3), 40 * k + i, np.uint8))
    lines = []
    for i, wnid in enumerate([wnids[1], wnids[0], wnids[1]]):
        cv2.imwrite(str(root / "val" / "images" / f"val_{i}.JPEG"), np.zeros((64, 64, 3), np.uint8))
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def test_tiny_imagenet_folders_load_and_prepare(tmp_path):
    root = _write_tiny_imagenet(tmp_path)
    paths, labels, wnids, names = load_tiny_imagenet(tmp_path, "train")
    assert names == ["goldfish", "European fire salamander"] and labels == [0, 0, 0, 1, 1, 1]
    assert paths[0] == str(root / "train" / "n01443537" / "images" / "n01443537_0.JPEG")
    val_paths, val_labels, _, _ = load_tiny_imagenet(tmp_path, "val")
    assert val_labels == [1, 0, 1] and val_paths[1].endswith("val_1.JPEG")

    info = prepare_image_data(tmp_path, tmp_path / "prep", dataset="tiny_imagenet", valid_per_class=1, seed=3)
    assert (info["train"], info["valid"], info["test"]) == (4, 2, 3)  # one training image per class held out
    valid = [r.split(",") for r in (tmp_path / "prep" / "valid.csv").read_text().splitlines()[1:]]
    assert sorted(r[2] for r in valid) == wnids
    train_ids = {r.split(",")[0] for r in (tmp_path / "prep" / "train.csv").read_text().splitlines()[1:]}
    assert not train_ids & {r[0] for r in valid}


@pytest.mark.parametrize(
    "damage, error, message",
    [
        (lambda root: (root / "val" / "val_annotations.txt").unlink(), FileNotFoundError, "val_annotations.txt' does not exist"),
        (lambda root: (root / "words.txt").write_text("n01443537\tgoldfish\n"), ValueError, "class n01629819 has no words"),
        (lambda root: [p.unlink() for p in (root / "train" / "n01629819" / "images").iterdir()], FileNotFoundError,
         "class n01629819 has no images"),
        (lambda root: (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn00000000\n"), ValueError,
         "line 1 must be"),
    ],
)
def test_tiny_imagenet_damage_is_named(tmp_path, damage, error, message):
    root = _write_tiny_imagenet(tmp_path)
    damage(root)
    split = "train" if "images" in message or "words" in message else "val"
    with pytest.raises(error, match=message):
        load_tiny_imagenet(tmp_path, split)


def test_missing_or_malformed_cifar_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected the CIFAR-100 python version: <data_folder>/cifar-100-python/"):
        load_cifar100(tmp_path, "train")
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    for name in ("train", "test", "meta"):
        with open(root / name, "wb") as handle:
            pickle.dump({"fine_label_names": ["a"], "data": np.zeros((1, 3072), np.uint8)}, handle)
    with pytest.raises(ValueError, match=r"has no key\(s\) fine_labels"):
        load_cifar100(tmp_path, "train")
    (root / "test").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="is not a readable pickle"):
        load_cifar100(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="expected Tiny-ImageNet-200"):
        load_tiny_imagenet(tmp_path, "train")


# ---------------------------------------------------------------------------
# Metrics
def test_topk_accuracy_against_a_loop():
    torch.manual_seed(0)
    logits, labels = torch.randn(50, 7), torch.randint(0, 7, (50,))
    for k in (1, 3, 5, 9):
        expected = sum(int(labels[i]) in sorted(range(7), key=lambda c: -logits[i, c])[:min(k, 7)] for i in range(50)) / 50
        assert topk_accuracy(logits, labels, k) == pytest.approx(expected)


def test_matching_through_the_projection_head_known_answer():
    torch.manual_seed(0)
    classes, templates, teacher_dim, student_dim = 5, 4, 12, 8
    prompts = torch.randn(classes, templates, teacher_dim)
    head = ProjectionHead(teacher_dim, student_dim).eval()
    with torch.no_grad():
        # Hand-made reference: F_T of every prompt, then the mean over templates.
        reference = torch.stack([torch.stack([head(prompts[c, t : t + 1])[0] for t in range(templates)]).mean(0)
                                 for c in range(classes)])
    centres = class_text_embeddings(prompts, project=head)
    assert torch.allclose(centres, reference, atol=1e-6)
    # Images at their class's centre (scaled, so cosine and l2 differ), two placed at another class.
    labels = torch.arange(classes).repeat(4)
    images = centres[labels] * torch.linspace(0.5, 2.0, len(labels)).unsqueeze(1)
    images[0], images[7] = centres[3], centres[0]  # labels 0 and 2: both wrong
    result = matching_accuracy(images, centres, labels)
    assert result == {"accuracy": pytest.approx(18 / 20), "chance": 0.2, "metric": "cosine"}
    assert matching_accuracy(centres[labels], centres, labels, metric="l2")["accuracy"] == 1.0
    with pytest.raises(ValueError, match="not in one space"):
        matching_accuracy(torch.randn(3, 4), centres, labels[:3])
