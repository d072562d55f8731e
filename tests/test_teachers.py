"""Tests of the face teachers, checkpoint loading and the teacher cache.

Expected IR-50 keys and shapes are written out here from face.evoLVe's
architecture description (shared/reference/teachers.md), independently of
the code under test. No test downloads anything.
"""

import json
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from speechbrain_xmkd.teachers.cache import (
    INDEX_FILE,
    build_or_load_cache,
    load_face_image,
)
from speechbrain_xmkd.teachers.checkpoint import CheckpointError, load_state_dict_file
from speechbrain_xmkd.teachers.face import (
    IR50,
    FacenetInceptionResnetV1,
    FrozenTeacher,
    SmallFaceResNet,
)

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix, n):
    return {
        f"{prefix}.{k}": (() if k == "num_batches_tracked" else (n,)) for k in BN_KEYS
    }


def face_evolve_ir50_table():
    """face.evoLVe IR-50 (112) state_dict keys -> shapes, from teachers.md."""
    table = {"input_layer.0.weight": (64, 3, 3, 3), "input_layer.2.weight": (64,)}
    table.update(_bn("input_layer.1", 64))
    widths = [(64, 64)] * 3 + [(64, 128)] + [(128, 128)] * 3 + [(128, 256)]
    widths += [(256, 256)] * 13 + [(256, 512)] + [(512, 512)] * 2
    assert len(widths) == 24
    for n, (cin, cout) in enumerate(widths):
        p = f"body.{n}.res_layer"
        table.update(_bn(f"{p}.0", cin))
        table[f"{p}.1.weight"] = (cout, cin, 3, 3)
        table[f"{p}.2.weight"] = (cout,)
        table[f"{p}.3.weight"] = (cout, cout, 3, 3)
        table.update(_bn(f"{p}.4", cout))
        if cin != cout:
            table[f"body.{n}.shortcut_layer.0.weight"] = (cout, cin, 1, 1)
            table.update(_bn(f"body.{n}.shortcut_layer.1", cout))
    table.update(_bn("output_layer.0", 512))
    table["output_layer.3.weight"] = (512, 25088)
    table["output_layer.3.bias"] = (512,)
    table.update(_bn("output_layer.4", 512))
    return table


def _randomise_stats(model, seed=0):
    """Non-default BN statistics, so that loading them is observable
    (parameters already differ between two randomly initialised models)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.named_buffers():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            else:
                t.fill_(7)


@pytest.fixture(scope="module")
def blank_ir50():
    """A fresh IR50 that tests only read (or fail to load into)."""
    return IR50()


@pytest.fixture(scope="module")
def ir50_file(tmp_path_factory):
    torch.manual_seed(0)
    model = IR50().eval()
    _randomise_stats(model)
    path = tmp_path_factory.mktemp("ir50") / "backbone_ir50.pth"
    torch.save(model.state_dict(), path)
    return model, path


# ----------------------------------------------------------------- IR-50 ----


def test_ir50_matches_face_evolve_key_table(blank_ir50):
    model = blank_ir50
    state = model.state_dict()
    table = face_evolve_ir50_table()
    assert {k: tuple(v.shape) for k, v in state.items()} == table
    assert len(state) == 349
    assert sum(not k.endswith("num_batches_tracked") for k in state) == 295
    assert sum(p.numel() for p in model.parameters()) == 43_574_976
    assert len(model.body) == 24
    conv_shortcuts = sorted({int(k.split(".")[1]) for k in state if "shortcut" in k})
    assert conv_shortcuts == [3, 7, 21]
    assert isinstance(model.body[0].shortcut_layer, torch.nn.MaxPool2d)
    assert model.body[0].shortcut_layer.stride == 2


def test_ir50_preprocess_is_face_evolve_normalisation(blank_ir50):
    import torchvision.transforms.functional as TF

    model = blank_ir50
    img = torch.tensor([0, 255, 51], dtype=torch.uint8).expand(1, 112, 112, 3)
    x = model.preprocess(img)
    assert x.shape == (1, 3, 112, 112)
    # (x/255 - 0.5)/0.5, channel order kept (RGB in, RGB out)
    expected = torch.tensor([-1.0, 1.0, 51 / 255 * 2 - 1])
    assert torch.allclose(x[0, :, 5, 5], expected, atol=1e-5)

    # face.evoLVe's extract_feature_v1: Resize(128) -> CenterCrop(112) ->
    # ToTensor -> Normalize(0.5, 0.5), here with torchvision's tensor ops.
    faces = torch.randint(0, 256, (2, 112, 112, 3), dtype=torch.uint8)
    ref = faces.permute(0, 3, 1, 2).float() / 255
    ref = TF.resize(ref, [128, 128], antialias=True)
    ref = TF.normalize(TF.center_crop(ref, [112, 112]), [0.5] * 3, [0.5] * 3)
    assert torch.allclose(model.preprocess(faces), ref, atol=1e-4)
    # channels-first input gives the same result
    assert torch.equal(model.preprocess(faces.permute(0, 3, 1, 2)), model.preprocess(faces))
    with pytest.raises(ValueError, match="0..255"):
        model.preprocess(img.float() / 255)


def test_ir50_load_round_trip(ir50_file):
    source, path = ir50_file
    loaded = IR50(weights=path).eval()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # Equal state_dicts make equal outputs; one forward checks it runs.
    faces = torch.randint(0, 256, (1, 112, 112, 3), dtype=torch.uint8)
    with torch.no_grad():
        out = loaded(loaded.preprocess(faces))
    assert out.shape == (1, 512) and torch.isfinite(out).all()


def test_ir50_renamed_and_missing_keys_are_listed(ir50_file, blank_ir50, tmp_path):
    source, path = ir50_file
    state = torch.load(path, weights_only=True)
    state["input_layer.0.weights"] = state.pop("input_layer.0.weight")
    del state["output_layer.3.bias"]
    bad = tmp_path / "renamed.pth"
    torch.save(state, bad)
    target = blank_ir50
    before = target.input_layer[1].running_mean.clone()
    with pytest.raises(CheckpointError) as err:
        load_state_dict_file(bad, target)
    msg = str(err.value)
    assert str(bad) in msg
    assert "2 missing key(s)" in msg
    assert "input_layer.0.weight" in msg and "output_layer.3.bias" in msg
    assert "1 unexpected key(s)" in msg and "input_layer.0.weights" in msg
    # all or nothing: the BN stats that did match were not copied
    assert torch.equal(target.input_layer[1].running_mean, before)


def test_ir50_without_num_batches_tracked_loads(ir50_file, tmp_path):
    source, path = ir50_file
    state = torch.load(path, weights_only=True)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    old = tmp_path / "old.pth"
    torch.save({"state_dict": state, "epoch": 120}, old)
    model = IR50()
    report = load_state_dict_file(old, model)
    assert report["loaded"] == 295 and len(report["kept_from_model"]) == 54
    assert torch.equal(model.output_layer[3].weight, source.output_layer[3].weight)


# ------------------------------------------------------- checkpoint.py ----


def _small():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten()
    )


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    wide = torch.nn.Sequential(
        torch.nn.Conv2d(3, 5, 3), torch.nn.BatchNorm2d(5), torch.nn.Flatten()
    )
    path = tmp_path / "wide.pt"
    torch.save(wide.state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_state_dict_file(path, _small())
    msg = str(err.value)
    assert str(path) in msg and "6 shape mismatch(es)" in msg
    assert "0.weight: file (5, 3, 3, 3) vs model (4, 3, 3, 3)" in msg
    assert "1.running_var: file (5,) vs model (4,)" in msg


def test_module_prefix_and_containers_are_unwrapped(tmp_path):
    src = _small()
    _randomise_stats(src)
    path = tmp_path / "ddp.pt"
    state = {"module." + k: v for k, v in src.state_dict().items()}
    torch.save({"model": state, "optimizer": {"lr": torch.tensor(0.1)}}, path)
    dst = _small()
    load_state_dict_file(path, dst)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def test_unknown_prefix_gets_a_hint_and_key_map_fixes_it(tmp_path):
    src = _small()
    path = tmp_path / "backbone.pt"
    torch.save({"backbone." + k: v for k, v in src.state_dict().items()}, path)
    with pytest.raises(CheckpointError, match="strip_prefixes=\\('backbone.',\\)"):
        load_state_dict_file(path, _small())
    load_state_dict_file(path, _small(), key_map={"backbone.": ""})


class NotAWeight:
    """A custom class: pickling it needs code execution to load."""

    def __init__(self):
        self.value = 3


def test_pickle_with_custom_objects_is_refused(tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"state_dict": _small().state_dict(), "config": NotAWeight()}, path)
    with pytest.raises(CheckpointError, match="refusing to load") as err:
        load_state_dict_file(path, _small())
    assert str(path) in str(err.value)
    assert "weights_only" in str(err.value)


def test_unreadable_and_missing_files_are_named(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="could not read checkpoint") as err:
        load_state_dict_file(junk, _small())
    assert str(junk) in str(err.value)
    notdict = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], notdict)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_state_dict_file(notdict, _small())
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_state_dict_file(tmp_path / "nope.pth", _small())


# --------------------------------------------------------- FrozenTeacher ----


def test_frozen_teacher_stays_eval_and_gets_no_update():
    torch.manual_seed(0)
    encoder = SmallFaceResNet(8, channels=(4, 4, 8, 8), input_size=16)
    encoder.train()
    teacher = FrozenTeacher(encoder)
    student = torch.nn.Linear(3 * 16 * 16, 8)
    modules = torch.nn.ModuleDict({"teacher": teacher, "student": student})
    modules.train()  # what Brain.fit does each epoch
    assert not teacher.training and not encoder.training
    assert not any(m.training for m in encoder.modules())

    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    optimizers = [
        torch.optim.SGD(modules.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1),
        torch.optim.AdamW(modules.parameters(), lr=0.5, weight_decay=0.1),
    ]
    images = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8)
    for opt in optimizers:
        x = teacher.preprocess(images)
        target = teacher(x)
        loss = (student(x.flatten(1)) - target).pow(2).sum() + target.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.weight.grad is not None
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k  # incl. BN running stats


def test_frozen_teacher_inside_speechbrain_brain_fit():
    import speechbrain as sb

    class Distill(sb.Brain):
        def compute_forward(self, batch, stage):
            images = batch[0]
            self.teacher_modes.append(self.modules.teacher.encoder.training)
            target = self.modules.teacher.embed_images(images)
            student = self.modules.student(images.float().flatten(1) / 255)
            return student, target

        def compute_objectives(self, predictions, batch, stage):
            student, target = predictions
            return (student - target).pow(2).mean()

    torch.manual_seed(0)
    teacher = FrozenTeacher(SmallFaceResNet(8, channels=(4, 4, 8, 8), input_size=16))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    brain = Distill(
        {"teacher": teacher, "student": torch.nn.Linear(16 * 16 * 3, 8)},
        lambda params: torch.optim.Adam(params, lr=0.1),
        run_opts={"device": "cpu", "noprogressbar": True},
    )
    brain.teacher_modes = []
    data = [(torch.randint(0, 256, (16, 16, 3), dtype=torch.uint8),) for _ in range(8)]
    brain.fit(range(2), data, train_loader_kwargs={"batch_size": 4})
    assert brain.teacher_modes == [False] * 4
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k


# ------------------------------------------------------------- facenet ----


def test_facenet_loads_local_file_with_logits_and_never_downloads(tmp_path, monkeypatch):
    import facenet_pytorch.models.inception_resnet_v1 as irv1

    def no_download(*args, **kwargs):
        raise AssertionError("facenet-pytorch tried to download weights")

    monkeypatch.setattr(irv1, "load_weights", no_download)
    monkeypatch.setattr(irv1, "download_url_to_file", no_download)

    torch.manual_seed(1)
    source = irv1.InceptionResnetV1(pretrained=None, classify=False).eval()
    _randomise_stats(source, seed=1)
    state = dict(source.state_dict())
    state["logits.weight"] = torch.randn(10, 512)
    state["logits.bias"] = torch.randn(10)
    path = tmp_path / "20180402-114759-vggface2.pt"
    torch.save(state, path)

    model = FacenetInceptionResnetV1(weights=path).eval()
    for k, v in source.state_dict().items():
        assert torch.equal(model.net.state_dict()[k], v), k

    faces = torch.randint(0, 256, (1, 112, 112, 3), dtype=torch.uint8)
    x = model.preprocess(faces)
    assert x.shape == (1, 3, 160, 160)
    # (x - 127.5) / 128: 0 -> -0.996..., 255 -> +0.996...
    assert float(x.max()) <= 127.5 / 128 and float(x.min()) >= -127.5 / 128
    identity = model.identity()
    with torch.no_grad():
        unit = model(x)
        model.normalize = False  # same weights, raw last_bn output
        emb = model(x)
    assert torch.allclose(unit.norm(dim=1), torch.ones(1), atol=1e-5)
    assert not torch.allclose(emb.norm(dim=1), torch.ones(1), atol=1e-2)
    assert torch.allclose(F.normalize(emb, dim=1), unit, atol=1e-6)
    assert model.identity() != identity


# --------------------------------------------------------------- cache ----


@pytest.fixture
def faces(tmp_path):
    """Five item keys over three 16x16 face images."""
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a", "b", "c"):
        path = str(tmp_path / "faces" / f"{name}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cv2.imwrite(path, rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        paths.append(path)
    a, b, c = paths
    items = [("u1", a), ("u2", b), ("u3", a), ("u4", c), ("u5", b)]
    return items, tmp_path / "cache"


def _counted_teacher(seed=0, input_size=16):
    torch.manual_seed(seed)
    teacher = FrozenTeacher(
        SmallFaceResNet(8, channels=(4, 4, 8, 8), input_size=input_size)
    )
    calls = []
    teacher.encoder.register_forward_hook(lambda m, i, o: calls.append(len(o)))
    return teacher, calls


def test_cache_built_once_then_reused(faces):
    items, cache_dir = faces
    teacher, calls = _counted_teacher()
    cache = build_or_load_cache(teacher, items, cache_dir, batch_size=2, progressbar=False)
    assert calls == [2, 1]  # 3 unique images, batches of 2
    assert cache.num_computed == 3 and len(cache) == 5
    assert cache.embeddings.shape == (3, 8)
    folders = os.listdir(cache_dir)
    assert len(folders) == 1 and folders[0].startswith("SmallFaceResNet-")
    assert sorted(os.listdir(cache_dir / folders[0])) == ["embeddings.pt", "index.json"]

    again = build_or_load_cache(teacher, items, cache_dir, batch_size=2, progressbar=False)
    assert calls == [2, 1] and again.num_computed == 0 and not again.built
    keys = ["u5", "u1", "u4"]
    assert torch.equal(again.lookup(keys), cache.lookup(keys))


def test_cache_lookup_order_matches_direct_teacher_output(faces):
    items, cache_dir = faces
    teacher, _ = _counted_teacher()
    cache = build_or_load_cache(teacher, items, cache_dir, batch_size=2, progressbar=False)
    paths = dict(items)
    order = ["u4", "u2", "u1", "u5", "u3", "u4"]
    expected = torch.cat(
        [teacher.embed_images(load_face_image(paths[k], 16)) for k in order]
    )
    got = cache.lookup(order)
    assert got.shape == (6, 8)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(cache["u3"], got[4])
    with pytest.raises(KeyError, match="'u9' is not in the teacher-embedding cache"):
        cache.lookup(["u1", "u9"])


def test_cache_rebuilt_when_weights_identity_or_extra_key_change(faces):
    items, cache_dir = faces
    teacher, calls = _counted_teacher()
    first = build_or_load_cache(teacher, items, cache_dir, progressbar=False)
    with torch.no_grad():
        teacher.encoder.embedding.bias[0] += 1.0
    changed = build_or_load_cache(teacher, items, cache_dir, progressbar=False)
    assert changed.num_computed == 3 and changed.folder != first.folder
    assert not torch.allclose(changed.lookup(["u1"]), first.lookup(["u1"]))

    other = build_or_load_cache(
        teacher, items, cache_dir, extra_key={"template": "arcface"}, progressbar=False
    )
    assert other.num_computed == 3 and other.folder != changed.folder
    # Same weights, different preprocessing (input size): a different teacher.
    bigger, _ = _counted_teacher(input_size=32)
    bigger.encoder.load_state_dict(teacher.encoder.state_dict())
    resized = build_or_load_cache(bigger, items, cache_dir, progressbar=False)
    assert resized.num_computed == 3 and resized.folder not in {
        first.folder, changed.folder, other.folder
    }
    assert len(calls) == 3  # the three 1-batch builds of `teacher`
    assert len(os.listdir(cache_dir)) == 4


def test_cache_updates_when_items_change(faces, tmp_path):
    items, cache_dir = faces
    teacher, calls = _counted_teacher()
    first = build_or_load_cache(teacher, items, cache_dir, progressbar=False)
    subset = build_or_load_cache(teacher, items[:2], cache_dir, progressbar=False)
    assert subset.num_computed == 0

    new_path = str(tmp_path / "faces" / "d.png")
    cv2.imwrite(new_path, np.full((16, 16, 3), 9, dtype=np.uint8))
    grown = build_or_load_cache(
        teacher, items + [("u6", new_path)], cache_dir, progressbar=False
    )
    assert grown.num_computed == 1 and calls == [3, 1]
    assert torch.equal(grown.lookup(["u1", "u4"]), first.lookup(["u1", "u4"]))
    # a key that now points to another image is recomputed, not served stale
    moved = [("u1", new_path)] + items[1:]
    remapped = build_or_load_cache(teacher, moved, cache_dir, progressbar=False)
    assert torch.equal(remapped.lookup(["u1"]), grown.lookup(["u6"]))
    assert torch.equal(remapped.lookup(["u3"]), first.lookup(["u3"]))
    with open(remapped.folder / INDEX_FILE) as f:
        index = json.load(f)
    assert index["keys"]["u1"] != index["keys"]["u3"] and len(index["paths"]) == 4


def test_undecodable_image_error_names_file_and_key(faces):
    items, cache_dir = faces
    bad = os.path.join(os.path.dirname(items[0][1]), "broken.png")
    with open(bad, "wb") as f:
        f.write(b"\x89PNG not really")
    teacher, _ = _counted_teacher()
    with pytest.raises(ValueError) as err:
        build_or_load_cache(teacher, items + [("u7", bad)], cache_dir, progressbar=False)
    assert "broken.png" in str(err.value) and "'u7'" in str(err.value)
    with pytest.raises(FileNotFoundError, match="missing.png.*'u8'"):
        build_or_load_cache(
            teacher, [("u8", bad.replace("broken", "missing"))], cache_dir, progressbar=False
        )


def test_interrupted_build_leaves_no_complete_looking_cache(faces):
    items, cache_dir = faces
    teacher, _ = _counted_teacher()
    seen = []

    def flaky(path):
        seen.append(path)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return load_face_image(path, 16)

    with pytest.raises(KeyboardInterrupt):
        build_or_load_cache(
            teacher, items, cache_dir, load_fn=flaky, batch_size=1, progressbar=False
        )
    for folder in cache_dir.glob("*") if cache_dir.exists() else []:
        assert not (folder / INDEX_FILE).exists()
        assert not [n for n in os.listdir(folder) if n.startswith(".tmp-")]
    cache = build_or_load_cache(teacher, items, cache_dir, progressbar=False)
    assert cache.num_computed == 3

    # index from one build, embeddings from another: detected and rebuilt
    stored = torch.load(cache.folder / "embeddings.pt", weights_only=True)
    stored["build_id"] = "someone-else"
    torch.save(stored, cache.folder / "embeddings.pt")
    assert build_or_load_cache(teacher, items, cache_dir, progressbar=False).num_computed == 3


def test_cache_leaves_a_bare_teacher_as_it_found_it(faces):
    items, cache_dir = faces
    torch.manual_seed(0)
    encoder = SmallFaceResNet(8, channels=(4, 4, 8, 8), input_size=16).train()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    build_or_load_cache(encoder, items, cache_dir, progressbar=False)
    assert encoder.training
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, before[k]), k  # ran in eval: BN stats untouched
