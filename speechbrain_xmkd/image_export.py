"""Image students as a plain folder: weights, class names, preprocessing; no yaml.

SpeechBrain has no image-classification interface, so an image student is
exported as files any PyTorch user can read, and loaded back by
:class:`ImageClassifier`::

    model_dir/
        model.ckpt          state_dict of the network (loaded with weights_only=True)
        model.json          {"architecture": "torchvision.models.resnet18", "kwargs": {"num_classes": 100}}
        classes.txt         one class name per line, in output order
        preprocessing.json  {"resize": 32, "crop": 32, "mean": [...], "std": [...]}
        README.md           model card

Preprocessing, as torchvision's ``Resize(resize)``, ``CenterCrop(crop)``,
``ToTensor()``, ``Normalize(mean, std)`` on an RGB image: the shorter side
is resized to ``resize`` (OpenCV, area interpolation when shrinking,
bilinear when enlarging), the centre ``crop`` x ``crop`` is kept, pixels
are scaled to [0, 1] and standardised per channel.
"""

import importlib
import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch

from .model_card import image_model_card

WEIGHTS = "model.ckpt"
ARCHITECTURE = "model.json"
CLASSES = "classes.txt"
PREPROCESSING = "preprocessing.json"


def export_image_model(model, out_dir, class_names, architecture, preprocessing, architecture_kwargs=None,
                       description=None, overwrite=False):
    """Writes an image classifier (e.g. a distilled student) as a model folder.

    Arguments
    ---------
    model : torch.nn.Module
        The trained network: ``[B, 3, crop, crop]`` -> ``[B, len(class_names)]`` logits.
    out_dir : str
        Folder to create.
    class_names : list of str
        Output index -> class name.
    architecture : str
        Import path of a callable that builds the network, e.g.
        ``"torchvision.models.resnet18"``.
    preprocessing : dict
        ``resize`` (shorter side, pixels), ``crop`` (square side), ``mean``
        and ``std`` (three values each, for RGB in [0, 1]).
    architecture_kwargs : dict, optional
        JSON-serialisable arguments of ``architecture``.
    description : str, optional
        A paragraph for the model card (how it was trained).
    overwrite : bool
        Replace ``out_dir`` if it holds a previous export.

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Example
    -------
    >>> import tempfile, os
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    >>> out = os.path.join(tempfile.mkdtemp(), "m")
    >>> export_image_model(net, out, ["cat", "dog"], "torch.nn.Linear",
    ...                    {"resize": 4, "crop": 4, "mean": [0.5] * 3, "std": [0.25] * 3})
    Traceback (most recent call last):
    ...
    ValueError: torch.nn.Linear(**{}) cannot be built: ...
    """
    kwargs = dict(architecture_kwargs or {})
    preprocessing = _check_preprocessing(preprocessing)
    class_names = [str(name) for name in class_names]
    for name in class_names:
        if not name or "\n" in name:
            raise ValueError(f"class name {name!r} cannot be written one per line")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"'{out_dir}' exists and is not empty: pass overwrite=True to replace it")
        if not (out_dir / PREPROCESSING).is_file():
            raise FileExistsError(f"'{out_dir}' is not an exported image model: not replacing it")

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # The folder must load back: rebuild from model.json and compare outputs.
    rebuilt = _build(architecture, kwargs)
    try:
        rebuilt.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"the weights do not fit {architecture}(**{kwargs}): {err}") from None
    probe = torch.zeros(1, 3, preprocessing["crop"], preprocessing["crop"])
    with torch.no_grad():
        outputs = rebuilt.eval()(probe).shape[-1]
    if outputs != len(class_names):
        raise ValueError(f"the network has {outputs} outputs but {len(class_names)} class names were given")

    staging = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex}.partial"
    staging.mkdir(parents=True)
    try:
        torch.save(state, staging / WEIGHTS)
        (staging / ARCHITECTURE).write_text(
            json.dumps({"architecture": architecture, "kwargs": kwargs}, indent=2) + "\n", encoding="utf-8"
        )
        (staging / CLASSES).write_text("\n".join(class_names) + "\n", encoding="utf-8")
        (staging / PREPROCESSING).write_text(json.dumps(preprocessing, indent=2) + "\n", encoding="utf-8")
        card = image_model_card(architecture, kwargs, class_names, preprocessing, description)
        (staging / "README.md").write_text(card, encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.replace(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir


class StudentClassifier(torch.nn.Module):
    """An embedding network followed by its task head: an image student as one module.

    The image recipe trains the student's trunk (``embedding_model``) and its
    classifier as two modules; exported, they are this one network.

    Arguments
    ---------
    embedding : dict
        ``{"architecture": import path, "kwargs": {...}}`` of the trunk.
    classifier : dict
        The same for the head (e.g. ``torch.nn.Linear``).

    Example
    -------
    >>> net = StudentClassifier({"architecture": "torch.nn.Flatten"},
    ...                         {"architecture": "torch.nn.Linear", "kwargs": {"in_features": 12, "out_features": 2}})
    >>> net(torch.zeros(1, 3, 2, 2)).shape
    torch.Size([1, 2])
    """

    def __init__(self, embedding, classifier):
        super().__init__()
        self.embedding_model = _build(embedding["architecture"], embedding.get("kwargs", {}))
        self.classifier = _build(classifier["architecture"], classifier.get("kwargs", {}))

    def forward(self, images):
        """``[B, 3, H, W]`` normalised images -> ``[B, classes]`` logits."""
        return self.classifier(self.embedding_model(images))


class ImageClassifier:
    """An exported image student: file in, ``(label, probability)`` out.

    Arguments
    ---------
    model : torch.nn.Module
        Image batch ``[B, 3, crop, crop]`` -> logits ``[B, C]``.
    class_names : list of str
        ``C`` names.
    preprocessing : dict
        ``resize``, ``crop``, ``mean``, ``std`` (see the module docstring).
    device : str
        Where the network runs.

    Example
    -------
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 2, 2))
    >>> clf = ImageClassifier(net, ["cat", "dog"], {"resize": 2, "crop": 2, "mean": [0, 0, 0], "std": [1, 1, 1]})
    >>> clf.preprocess(np.full((4, 6, 3), 255, dtype=np.uint8)).shape
    torch.Size([3, 2, 2])
    """

    def __init__(self, model, class_names, preprocessing, device="cpu"):
        self.model = model.to(device).eval()
        self.class_names = list(class_names)
        self.preprocessing = _check_preprocessing(preprocessing)
        self.device = device

    @classmethod
    def from_folder(cls, path, device="cpu"):
        """Loads a folder written by :func:`export_image_model`."""
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder '{folder}' does not exist")
        missing = [n for n in (WEIGHTS, ARCHITECTURE, CLASSES, PREPROCESSING) if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"'{folder}' is not an exported image model: it lacks {', '.join(missing)}")
        spec = json.loads((folder / ARCHITECTURE).read_text(encoding="utf-8"))
        model = _build(spec["architecture"], spec.get("kwargs", {}))
        try:
            state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as err:
            raise ValueError(f"'{folder / WEIGHTS}' cannot be loaded into {spec['architecture']}: {err}") from None
        names = (folder / CLASSES).read_text(encoding="utf-8").splitlines()
        preprocessing = json.loads((folder / PREPROCESSING).read_text(encoding="utf-8"))
        return cls(model, names, preprocessing, device=device)

    def preprocess(self, image):
        """``[H, W, 3]`` uint8 RGB array -> ``[3, crop, crop]`` float tensor."""
        import cv2

        size, crop = self.preprocessing["resize"], self.preprocessing["crop"]
        height, width = image.shape[:2]
        scale = size / min(height, width)
        new_h, new_w = (size, int(size * width / height)) if height <= width else (int(size * height / width), size)
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        if (new_h, new_w) != (height, width):
            image = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
        if new_h < crop or new_w < crop:
            raise ValueError(f"resize {size} is smaller than crop {crop}")
        top, left = int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))
        image = image[top : top + crop, left : left + crop]
        pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        mean = torch.tensor(self.preprocessing["mean"]).view(3, 1, 1)
        std = torch.tensor(self.preprocessing["std"]).view(3, 1, 1)
        return (pixels - mean) / std

    @torch.no_grad()
    def classify_batch(self, images):
        """``[B, 3, crop, crop]`` preprocessed images -> (probabilities ``[B, C]``, labels)."""
        probs = torch.softmax(self.model(images.to(self.device)).float(), dim=-1)
        return probs.cpu(), [self.class_names[i] for i in probs.argmax(dim=-1).tolist()]

    def classify_file(self, image_path):
        """Returns ``(label, probability)`` for one image file."""
        import cv2

        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"image '{image_path}' cannot be read or decoded")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        probs, labels = self.classify_batch(self.preprocess(image).unsqueeze(0))
        return labels[0], float(probs[0].max())


def _check_preprocessing(preprocessing):
    missing = {"resize", "crop", "mean", "std"} - set(preprocessing)
    if missing:
        raise ValueError(f"preprocessing lacks {', '.join(sorted(missing))}")
    checked = dict(preprocessing)
    checked["resize"], checked["crop"] = int(checked["resize"]), int(checked["crop"])
    for key in ("mean", "std"):
        values = [float(v) for v in checked[key]]
        if len(values) != 3:
            raise ValueError(f"preprocessing {key} needs 3 values (RGB), got {len(values)}")
        checked[key] = values
    if min(checked["std"]) <= 0:
        raise ValueError("preprocessing std values must be positive")
    if checked["crop"] > checked["resize"]:
        raise ValueError(f"crop {checked['crop']} is larger than resize {checked['resize']}")
    return checked


def _build(architecture, kwargs):
    module_name, _, attribute = architecture.rpartition(".")
    try:
        builder = getattr(importlib.import_module(module_name), attribute)
        return builder(**kwargs)
    except Exception as err:
        raise ValueError(f"{architecture}(**{kwargs}) cannot be built: {err}") from None
