"""Embedded image set: classes described in words, rendered deterministically.

Every class is a combination ``colour x texture x shape`` ("a red striped
circle"), so the class names carry exactly what tells the classes apart and
a text teacher reading "a photo of a red striped circle." has something to
teach. Images are 32x32 RGB, drawn with OpenCV at 4x and shrunk (smooth
edges), with random position, size, rotation, stripe angle and period,
background and noise; everything comes from ``seed``, so the same arguments
give the same bytes. The set is stored in the CIFAR-100 python format
(``cifar-100-python/{train,test,meta}``; fine labels = classes, coarse
labels = shapes), so the recipe reads it with the CIFAR-100 loader.

    python recipes/CIFAR100/synthetic_images.py results/synthetic_images
"""

import json
import logging
import pickle
import sys
from itertools import product
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from image_prepare import prepare_image_data  # noqa: E402

logger = logging.getLogger(__name__)

FORMAT = 1
COLOURS = {  # RGB
    "red": (215, 40, 35),
    "green": (40, 165, 60),
    "blue": (40, 75, 215),
    "yellow": (230, 205, 40),
    "purple": (140, 55, 180),
    "orange": (240, 130, 30),
}
SHAPES = ("circle", "square", "triangle", "cross")
TEXTURES = ("plain", "striped", "dotted")
SCALE = 4  # drawn at 4x, shrunk with INTER_AREA


def class_list(shapes, colours, textures):
    """``[(colour, texture, shape), ...]`` in class-index order.

    Example
    -------
    >>> class_list(["circle"], ["red", "blue"], ["plain"])
    [('red', 'plain', 'circle'), ('blue', 'plain', 'circle')]
    """
    for name, given, valid in (("shape", shapes, SHAPES), ("colour", colours, COLOURS), ("texture", textures, TEXTURES)):
        if not given:
            raise ValueError(f"no {name}s given; valid: {', '.join(valid)}")
        unknown = [g for g in given if g not in valid]
        if unknown:
            raise ValueError(f"unknown {name}(s) {', '.join(map(str, unknown))}; valid: {', '.join(valid)}")
    return [(c, t, s) for s, c, t in product(shapes, colours, textures)]


def count_classes(shapes, colours, textures):
    """Number of classes (for the yaml's ``num_classes``)."""
    return len(class_list(shapes, colours, textures))


def _shape_mask(shape, rng, size):
    big = size * SCALE
    mask = np.zeros((big, big), np.uint8)
    radius = rng.uniform(0.24, 0.38) * big
    centre = np.array([big / 2, big / 2]) + rng.uniform(-0.1, 0.1, 2) * big
    # Up to +-20 degrees from the upright pose (a square on its side, a
    # triangle pointing up or down): the shapes stay tellable apart at 32x32.
    upright = {"circle": 0.0, "square": np.pi / 4, "triangle": -np.pi / 2 + np.pi * rng.integers(2), "cross": 0.0}
    angle = upright[shape] + rng.uniform(-0.35, 0.35)
    if shape == "circle":
        cv2.circle(mask, tuple(int(v) for v in centre), int(radius), 255, -1, cv2.LINE_AA)
        return mask
    if shape == "square":
        corners = [angle + k * np.pi / 2 for k in range(4)]
        points = [centre + radius * np.array([np.cos(a), np.sin(a)]) for a in corners]
    elif shape == "triangle":
        corners = [angle + k * 2 * np.pi / 3 for k in range(3)]
        points = [centre + 1.15 * radius * np.array([np.cos(a), np.sin(a)]) for a in corners]
    else:  # cross: two bars
        arm, half = radius, 0.33 * radius
        for bar in (np.array([[-arm, -half], [arm, -half], [arm, half], [-arm, half]]),
                    np.array([[-half, -arm], [half, -arm], [half, arm], [-half, arm]])):
            rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            cv2.fillPoly(mask, [np.round(bar @ rot.T + centre).astype(np.int32)], 255, cv2.LINE_AA)
        return mask
    cv2.fillPoly(mask, [np.round(np.array(points)).astype(np.int32)], 255, cv2.LINE_AA)
    return mask


def _texture(texture, rng, size):
    """Share of the main colour per pixel, ``[big, big]`` in [0, 1]."""
    big = size * SCALE
    if texture == "plain":
        return np.ones((big, big), np.float32)
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32)
    if texture == "striped":
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(5.0, 7.0) * SCALE
        phase = rng.uniform(0, period)
        coord = xx * np.cos(theta) + yy * np.sin(theta) + phase
        return ((coord % period) < period / 2).astype(np.float32)
    spacing = rng.uniform(5.0, 6.5) * SCALE  # dotted
    offset = rng.uniform(0, spacing, 2)
    dy = (yy + offset[0]) % spacing - spacing / 2
    dx = (xx + offset[1]) % spacing - spacing / 2
    return (np.hypot(dx, dy) > 0.3 * spacing).astype(np.float32)


def render(colour, texture, shape, rng, size=32):
    """One ``uint8 [size, size, 3]`` RGB image of the class.

    Example
    -------
    >>> image = render("red", "striped", "circle", np.random.default_rng(0))
    >>> image.shape, image.dtype
    ((32, 32, 3), dtype('uint8'))
    """
    grey = rng.uniform(90, 200)
    background = np.clip(grey + rng.normal(0, 12, 3), 0, 255).astype(np.float32)
    main = np.clip(np.array(COLOURS[colour], np.float32) * rng.uniform(0.8, 1.1), 0, 255)
    # Stripes / dots alternate the colour with a light version of it.
    second = 0.35 * main + 0.65 * 255.0
    share = _texture(texture, rng, size)[..., None]
    fill = share * main + (1.0 - share) * second
    alpha = (_shape_mask(shape, rng, size).astype(np.float32) / 255.0)[..., None]
    image = alpha * fill + (1.0 - alpha) * background
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    image = image + rng.normal(0, 10.0, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _images(classes, per_class, seed, split_id, size):
    data, labels, shapes, names = [], [], [], []
    for label, (colour, texture, shape) in enumerate(classes):
        for i in range(per_class):
            rng = np.random.default_rng([seed, split_id, label, i])
            image = render(colour, texture, shape, rng, size)
            data.append(image.transpose(2, 0, 1).reshape(-1))  # CIFAR rows are channel-major
            labels.append(label)
            shapes.append(shape)
            names.append(f"{colour}_{texture}_{shape}_{i:04d}.png")
    return np.stack(data).astype(np.uint8), labels, shapes, names


def write_synthetic_images(
    data_folder,
    seed=1234,
    train_per_class=40,
    test_per_class=20,
    shapes=SHAPES[:3],
    colours=("red", "green", "blue"),
    textures=TEXTURES,
):
    """Renders the set into ``data_folder/cifar-100-python`` (skipped when up to date).

    Arguments
    ---------
    data_folder : str
        Destination root.
    seed : int
        Seed of every random choice.
    train_per_class, test_per_class : int
        Images per class in each split.
    shapes, colours, textures : list of str
        The words combined into classes (see ``SHAPES``, ``COLOURS``, ``TEXTURES``).

    Returns
    -------
    list of str
        The class names (``"red_striped_circle"``).
    """
    classes = class_list(list(shapes), list(colours), list(textures))
    if int(train_per_class) < 1 or int(test_per_class) < 1:
        raise ValueError(f"need >= 1 image per class, got train {train_per_class}, test {test_per_class}")
    root = Path(data_folder) / "cifar-100-python"
    options = {
        "format": FORMAT, "seed": int(seed), "train_per_class": int(train_per_class),
        "test_per_class": int(test_per_class), "shapes": list(shapes), "colours": list(colours),
        "textures": list(textures), "size": 32,
    }
    names = ["_".join(c) for c in classes]
    marker = root / "synthetic.json"
    if marker.is_file() and json.loads(marker.read_text()) == options:
        return names
    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    shape_names = list(shapes)
    for split_id, (split, per_class) in enumerate((("train", train_per_class), ("test", test_per_class))):
        data, labels, shape_of, files = _images(classes, int(per_class), int(seed), split_id, 32)
        batch = {
            "batch_label": f"synthetic {split}",
            "data": data,
            "fine_labels": labels,
            "coarse_labels": [shape_names.index(s) for s in shape_of],
            "filenames": files,
        }
        with open(root / split, "wb") as handle:
            pickle.dump(batch, handle, protocol=4)
    with open(root / "meta", "wb") as handle:
        pickle.dump({"fine_label_names": names, "coarse_label_names": shape_names}, handle, protocol=4)
    marker.write_text(json.dumps(options))
    logger.info("Rendered %d synthetic classes into %s", len(names), root)
    return names


def prepare_synthetic_images(data_folder, save_folder, valid_per_class=0, **kwargs):
    """Renders the set if needed, then prepares it like CIFAR-100 (see ``image_prepare``).

    Arguments
    ---------
    data_folder : str
        Where the set is rendered.
    save_folder : str
        Where the lists go.
    valid_per_class : int
        Held-out training images per class (0: validate on the test split).
    **kwargs
        Passed to :func:`write_synthetic_images`.
    """
    write_synthetic_images(data_folder, **kwargs)
    return prepare_image_data(
        data_folder, save_folder, dataset="cifar100", valid_per_class=valid_per_class, seed=kwargs.get("seed", 1234)
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    target = sys.argv[1] if len(sys.argv) > 1 else "results/synthetic_images"
    print(write_synthetic_images(target))
