"""Image data preparation: CIFAR-100 pickles or Tiny-ImageNet-200 folders -> CSV lists.

Reads the datasets in their standard on-disk formats (nothing is
downloaded) and writes, in ``save_folder``:

- ``train.csv``, ``valid.csv``, ``test.csv`` with columns ``ID,path,label``
  (``label`` is the class label: the CIFAR fine-label name or the
  Tiny-ImageNet wnid; ``path`` starts with ``$data_root`` when the file is
  inside the data folder);
- ``classes.json``: ``[{"label": ..., "name": ...}]`` in class-index order,
  ``name`` being the words that go into the text prompts ("maple tree",
  "goldfish");
- ``prep.json``: the options of the preparation (a second call with the
  same options does nothing).

CIFAR-100 images live inside pickles, so they are written once as PNG files
under ``save_folder/images``; Tiny-ImageNet's JPEG files are listed in
place. ``valid.csv`` is the test list (the paper reports the test accuracy
of the recipe, with no separate validation set) unless
``valid_per_class > 0``, which holds out that many seeded training images
per class.

Authors
 * speechbrain-xmkd contributors
"""

import csv
import json
import logging
import os
import pickle
import random
from collections import defaultdict
from pathlib import Path

import numpy as np

try:
    import cv2
except ImportError:  # pragma: no cover - opencv is a declared dependency
    cv2 = None

logger = logging.getLogger(__name__)

PREP_FORMAT = 1
CIFAR_LAYOUT = (
    "expected the CIFAR-100 python version: <data_folder>/cifar-100-python/ (or <data_folder> "
    "itself) holding the pickles 'train' and 'test' (keys 'data' [N, 3072] uint8 and "
    "'fine_labels') and 'meta' (key 'fine_label_names')"
)
TINY_LAYOUT = (
    "expected Tiny-ImageNet-200: <data_folder>/tiny-imagenet-200/ (or <data_folder> itself) "
    "holding wnids.txt, words.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and "
    "val/val_annotations.txt"
)
DATASETS = ("cifar100", "tiny_imagenet")


# ---------------------------------------------------------------------------
# CIFAR-100
def _cifar_root(folder):
    folder = Path(folder)
    for root in (folder / "cifar-100-python", folder):
        if all((root / name).is_file() for name in ("train", "test", "meta")):
            return root
    missing = [n for n in ("train", "test", "meta") if not (folder / "cifar-100-python" / n).is_file()]
    raise FileNotFoundError(
        f"no CIFAR-100 data in '{folder}' (missing cifar-100-python/{', cifar-100-python/'.join(missing)}): "
        f"{CIFAR_LAYOUT}"
    )


def _read_pickle(path, keys):
    try:
        with open(path, "rb") as handle:
            # The official files were pickled by Python 2: latin1 keeps the bytes.
            obj = pickle.load(handle, encoding="latin1")
    except Exception as err:
        raise ValueError(f"CIFAR-100 file '{path}' is not a readable pickle ({err}): {CIFAR_LAYOUT}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"CIFAR-100 file '{path}' holds a {type(obj).__name__}, not a dict: {CIFAR_LAYOUT}")
    obj = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ValueError(
            f"CIFAR-100 file '{path}' has no key(s) {', '.join(missing)} (has {', '.join(sorted(obj))}): "
            f"{CIFAR_LAYOUT}"
        )
    return obj


def load_cifar100(folder, split):
    """Reads one CIFAR-100 split from the python-version pickles.

    Arguments
    ---------
    folder : str or os.PathLike
        The folder holding ``cifar-100-python/`` (or that folder itself).
    split : str
        ``"train"`` or ``"test"``.

    Returns
    -------
    tuple
        ``(images uint8 [N, 32, 32, 3] RGB, labels list of int, class_names list of str)``;
        class names are the fine-label names (``"maple_tree"``).
    """
    if split not in ("train", "test"):
        raise ValueError(f"CIFAR-100 split must be 'train' or 'test', got {split!r}")
    root = _cifar_root(folder)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in _read_pickle(root / "meta", ["fine_label_names"])["fine_label_names"]]
    batch = _read_pickle(root / split, ["data", "fine_labels"])
    data = np.asarray(batch["data"])
    labels = [int(y) for y in batch["fine_labels"]]
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"CIFAR-100 file '{root / split}': 'data' must be uint8 [N, 3072], got {data.dtype} "
            f"{list(data.shape)}: {CIFAR_LAYOUT}"
        )
    if len(labels) != data.shape[0]:
        raise ValueError(f"CIFAR-100 file '{root / split}': {data.shape[0]} images but {len(labels)} labels")
    bad = [y for y in labels if not 0 <= y < len(names)]
    if bad:
        raise ValueError(
            f"CIFAR-100 file '{root / split}': label {bad[0]} is outside the {len(names)} classes "
            f"of '{root / 'meta'}'"
        )
    # Rows are channel-major (1024 red, 1024 green, 1024 blue values).
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels, names


# ---------------------------------------------------------------------------
# Tiny-ImageNet-200
def _tiny_root(folder):
    folder = Path(folder)
    for root in (folder / "tiny-imagenet-200", folder):
        if (root / "train").is_dir() and (root / "words.txt").is_file():
            return root
    raise FileNotFoundError(f"no Tiny-ImageNet data in '{folder}': {TINY_LAYOUT}")


def _tiny_classes(root):
    wnid_file = root / "wnids.txt"
    if wnid_file.is_file():
        wnids = [line.strip() for line in wnid_file.read_text().splitlines() if line.strip()]
    else:
        wnids = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not wnids:
        raise ValueError(f"no classes in '{root}' (wnids.txt and train/ are empty): {TINY_LAYOUT}")
    words = {}
    for number, line in enumerate((root / "words.txt").read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise ValueError(f"'{root / 'words.txt'}' line {number} is not '<wnid>\\t<words>': {line!r}")
        words[parts[0].strip()] = parts[1]
    names = []
    for wnid in wnids:
        if wnid not in words or not words[wnid].split(",")[0].strip():
            raise ValueError(
                f"class {wnid} has no words in '{root / 'words.txt'}': every class needs a name "
                "for its text prompts"
            )
        names.append(words[wnid].split(",")[0].strip())  # the first synonym
    return wnids, names


def load_tiny_imagenet(folder, split):
    """Lists one Tiny-ImageNet-200 split.

    Arguments
    ---------
    folder : str or os.PathLike
        The folder holding ``tiny-imagenet-200/`` (or that folder itself).
    split : str
        ``"train"`` or ``"val"`` (the labelled evaluation split).

    Returns
    -------
    tuple
        ``(paths list of str, labels list of int, wnids list of str, names list of str)``;
        ``names`` is the first synonym of each class in ``words.txt``.
    """
    if split not in ("train", "val"):
        raise ValueError(f"Tiny-ImageNet split must be 'train' or 'val', got {split!r}")
    root = _tiny_root(folder)
    wnids, names = _tiny_classes(root)
    index = {wnid: i for i, wnid in enumerate(wnids)}
    paths, labels = [], []
    if split == "train":
        for wnid in wnids:
            images = root / "train" / wnid / "images"
            files = sorted(images.glob("*.JPEG")) if images.is_dir() else []
            if not files:
                raise FileNotFoundError(f"class {wnid} has no images in '{images}': {TINY_LAYOUT}")
            paths += [str(f) for f in files]
            labels += [index[wnid]] * len(files)
    else:
        annotations = root / "val" / "val_annotations.txt"
        if not annotations.is_file():
            raise FileNotFoundError(f"'{annotations}' does not exist: {TINY_LAYOUT}")
        for number, line in enumerate(annotations.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2 or parts[1] not in index:
                raise ValueError(
                    f"'{annotations}' line {number} must be '<file>\\t<wnid>\\t...' with a wnid of "
                    f"wnids.txt, got {line!r}"
                )
            path = root / "val" / "images" / parts[0]
            if not path.is_file():
                raise FileNotFoundError(f"'{path}' (listed in '{annotations}' line {number}) does not exist")
            paths.append(str(path))
            labels.append(index[parts[1]])
        if not paths:
            raise ValueError(f"'{annotations}' lists no images: {TINY_LAYOUT}")
    return paths, labels, wnids, names


# ---------------------------------------------------------------------------
# Shared
def read_image(path, where=""):
    """Reads an image file as ``uint8`` RGB ``[H, W, 3]``, naming the file on failure.

    Arguments
    ---------
    path : str
        Image file.
    where : str
        Where it is listed (``"train.csv row 12"``), for the message.
    """
    suffix = f" (listed in {where})" if where else ""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image '{path}'{suffix} does not exist")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ValueError(f"image '{path}'{suffix} could not be decoded")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _as_row_path(path, data_folder):
    path = Path(path).resolve()
    try:
        return "$data_root/" + path.relative_to(Path(data_folder).resolve()).as_posix()
    except ValueError:
        return str(path)


def _write_csv(path, rows):
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ID", "path", "label"])
        writer.writerows(rows)
    os.replace(tmp, path)


def _holdout(rows, per_class, seed):
    """Splits rows into (kept, held out) with ``per_class`` seeded rows per class held out."""
    by_class = defaultdict(list)
    for row in rows:
        by_class[row[2]].append(row)
    rng = random.Random(seed)
    held = set()
    for label in sorted(by_class):
        members = by_class[label]
        if len(members) <= per_class:
            raise ValueError(
                f"class {label} has {len(members)} training images: cannot hold out "
                f"valid_per_class={per_class} and keep some for training"
            )
        held.update(row[0] for row in rng.sample(members, per_class))
    return [r for r in rows if r[0] not in held], [r for r in rows if r[0] in held]


def _source_stamp(data_folder, dataset):
    """Size and modification time of the files that define the dataset (a re-rendered
    or replaced set must not be served from old lists)."""
    try:
        if dataset == "cifar100":
            root = _cifar_root(data_folder)
            files = [root / n for n in ("train", "test", "meta")]
        else:
            root = _tiny_root(data_folder)
            files = [root / n for n in ("wnids.txt", "words.txt", "val/val_annotations.txt")]
    except FileNotFoundError:
        return None
    return {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()}


def prepare_image_data(data_folder, save_folder, dataset="cifar100", valid_per_class=0, seed=1234):
    """Writes ``train.csv``, ``valid.csv``, ``test.csv`` and ``classes.json``.

    Arguments
    ---------
    data_folder : str
        Dataset root (see ``CIFAR_LAYOUT`` / ``TINY_LAYOUT``).
    save_folder : str
        Where the lists (and CIFAR's PNG files) go.
    dataset : str
        ``"cifar100"`` or ``"tiny_imagenet"``.
    valid_per_class : int
        0: ``valid.csv`` is the test list; N: N seeded training images per
        class are held out as ``valid.csv`` (and leave ``train.csv``).
    seed : int
        Seed of the hold-out.

    Returns
    -------
    dict
        The contents of ``prep.json`` (options and counts).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset '{dataset}'; valid: {', '.join(DATASETS)}")
    if int(valid_per_class) < 0:
        raise ValueError(f"valid_per_class must be >= 0, got {valid_per_class}")
    save = Path(save_folder)
    options = {
        "format": PREP_FORMAT,
        "dataset": dataset,
        "data_folder": str(Path(data_folder).resolve()),
        "valid_per_class": int(valid_per_class),
        "seed": int(seed),
        "source": _source_stamp(data_folder, dataset),
    }
    marker = save / "prep.json"
    outputs = [save / n for n in ("train.csv", "valid.csv", "test.csv", "classes.json")]
    if marker.is_file() and all(p.is_file() for p in outputs):
        done = json.loads(marker.read_text())
        if {k: done.get(k) for k in options} == options:
            logger.info("Image lists in %s are up to date; skipping preparation", save)
            return done
    save.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)

    splits = {}
    if dataset == "cifar100":
        for split in ("train", "test"):
            images, labels, names = load_cifar100(data_folder, split)
            folder = save / "images" / split
            folder.mkdir(parents=True, exist_ok=True)
            rows = []
            for i, (image, label) in enumerate(zip(images, labels)):
                path = folder / f"{i:05d}.png"
                if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
                    raise OSError(f"could not write '{path}'")
                rows.append([f"{split}_{i:05d}", _as_row_path(path, data_folder), names[label]])
            splits[split] = rows
        classes = [{"label": n, "name": n.replace("_", " ")} for n in names]
    else:
        for split, source in (("train", "train"), ("test", "val")):
            paths, labels, wnids, names = load_tiny_imagenet(data_folder, source)
            splits[split] = [
                [f"{split}_{i:06d}", _as_row_path(p, data_folder), wnids[y]] for i, (p, y) in enumerate(zip(paths, labels))
            ]
        classes = [{"label": w, "name": n} for w, n in zip(wnids, names)]

    train, valid = splits["train"], splits["test"]
    if int(valid_per_class) > 0:
        train, valid = _holdout(train, int(valid_per_class), seed)
    _write_csv(save / "train.csv", train)
    _write_csv(save / "valid.csv", valid)
    _write_csv(save / "test.csv", splits["test"])
    (save / "classes.json").write_text(json.dumps(classes, indent=1))
    done = {**options, "classes": len(classes), "train": len(train), "valid": len(valid), "test": len(splits["test"])}
    marker.write_text(json.dumps(done, indent=2))
    logger.info("Prepared %s: %s", dataset, done)
    return done
