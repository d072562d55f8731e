"""Teacher-embedding cache: E_T computed once per face, reused across runs.

The teacher is frozen, so E_T for a face never changes during training;
computing it once (on the main process, before training) removes the
teacher from the training loop. The cache is one tensor file plus a json
index in a folder whose name is a key over everything that changes the
embeddings: the teacher's ``identity()`` (architecture and
preprocessing), a SHA-256 of its weights and ``extra_key`` (face alignment
settings, loader options). A different teacher or setting therefore gets
its own folder; a changed item list updates the folder, computing only the
faces it does not hold yet.

Authors
 * speechbrain-xmkd contributors
"""

import functools
import hashlib
import json
import logging
import os
import tempfile
import uuid
from pathlib import Path

import numpy as np
import torch

from speechbrain_xmkd.teachers.face import FrozenTeacher

try:
    import cv2
except ImportError:  # pragma: no cover - opencv is a declared dependency
    cv2 = None

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
EMBEDDINGS_FILE = "embeddings.pt"
INDEX_FILE = "index.json"


def load_face_image(path, size=None):
    """Reads an image file as ``uint8`` RGB ``[H, W, 3]``.

    Arguments
    ---------
    path : str or os.PathLike
        Image file (png, jpg, ...). Grey or RGBA images become RGB.
    size : int or tuple of int, optional
        Output side (int) or ``(height, width)``; ``None`` keeps the size.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array ``[H, W, 3]`` in RGB order.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file cannot be decoded as an image (message names it).

    Example
    -------
    >>> import tempfile, os, cv2
    >>> f = os.path.join(tempfile.mkdtemp(), "face.png")
    >>> bgr = np.zeros((8, 8, 3), dtype=np.uint8); bgr[..., 2] = 255  # red
    >>> _ = cv2.imwrite(f, bgr)
    >>> img = load_face_image(f, size=4)
    >>> img.shape, img.dtype, img[0, 0].tolist()
    ((4, 4, 3), dtype('uint8'), [255, 0, 0])
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"face image '{path}' does not exist")
    if cv2 is not None:
        # imdecode on bytes instead of imread: imread fails silently on
        # non-ASCII paths on some platforms.
        data = np.fromfile(path, dtype=np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        if image is None:
            raise ValueError(f"face image '{path}' could not be decoded")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    else:  # pragma: no cover
        from PIL import Image

        try:
            with Image.open(path) as pil:
                image = np.asarray(pil.convert("RGB"))
        except Exception as err:
            raise ValueError(f"face image '{path}' could not be decoded") from err
    if size is not None:
        height, width = (size, size) if np.isscalar(size) else tuple(size)
        if image.shape[:2] != (height, width):
            image = _resize_image(image, int(height), int(width))
    return np.ascontiguousarray(image)


def _resize_image(image, height, width):
    if cv2 is None:  # pragma: no cover
        from PIL import Image

        return np.asarray(Image.fromarray(image).resize((width, height)))
    shrinking = height * width < image.shape[0] * image.shape[1]
    # INTER_AREA avoids aliasing when shrinking; bilinear when enlarging.
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def _base_module(teacher):
    return teacher.encoder if isinstance(teacher, FrozenTeacher) else teacher


def teacher_identity(teacher):
    """Returns ``teacher.identity()``, or a description of the module.

    Arguments
    ---------
    teacher : torch.nn.Module
        Encoder, bare or wrapped in ``FrozenTeacher``.

    Returns
    -------
    str
        The identity string (class name and architecture as a fallback).

    Example
    -------
    >>> teacher_identity(torch.nn.Linear(2, 3))
    'Linear:Linear(in_features=2, out_features=3, bias=True)'
    """
    identity = getattr(teacher, "identity", None)
    if callable(identity):
        return str(identity())
    module = _base_module(teacher)
    return f"{type(module).__qualname__}:{module!r}"


def weights_sha256(module):
    """SHA-256 over a module's state_dict, deterministic across runs.

    Tensors are hashed in sorted key order, each as its name, dtype, shape
    and raw bytes, so equal weights give equal digests whatever the device
    or the module registration order. A ``FrozenTeacher`` hashes like the
    encoder it wraps.

    Arguments
    ---------
    module : torch.nn.Module
        Module whose parameters and buffers are hashed.

    Returns
    -------
    str
        Hex digest.

    Example
    -------
    >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    >>> _ = b.load_state_dict(a.state_dict())
    >>> weights_sha256(a) == weights_sha256(b)
    True
    >>> with torch.no_grad():
    ...     b.bias[0] += 1
    >>> weights_sha256(a) == weights_sha256(b)
    False
    """
    digest = hashlib.sha256()
    state = _base_module(module).state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        header = f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|"
        digest.update(header.encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def cache_key(teacher, extra_key=None):
    """Key of the cache folder for ``teacher`` and ``extra_key``.

    Arguments
    ---------
    teacher : torch.nn.Module
        The teacher encoder.
    extra_key : any json-serialisable, optional
        Settings outside the teacher that change its input (alignment,
        loader); dict keys are sorted so order does not matter.

    Returns
    -------
    dict
        ``{"key": hex digest, "identity": str, "weights_sha256": str,
        "extra_key": canonical json string}``.

    Example
    -------
    >>> m = torch.nn.Linear(2, 2)
    >>> cache_key(m, {"a": 1, "b": 2})["key"] == cache_key(m, {"b": 2, "a": 1})["key"]
    True
    """
    parts = {
        "format": CACHE_FORMAT,
        "identity": teacher_identity(teacher),
        "weights_sha256": weights_sha256(teacher),
        "extra_key": json.dumps(extra_key, sort_keys=True, default=str),
    }
    blob = json.dumps(parts, sort_keys=True).encode("utf-8")
    parts["key"] = hashlib.sha256(blob).hexdigest()
    del parts["format"]
    return parts


class TeacherEmbeddingCache:
    """Cached teacher embeddings with fast lookup by item key.

    Normally obtained from ``build_or_load_cache``.

    Arguments
    ---------
    embeddings : torch.Tensor
        ``[N, D]`` one row per unique teacher input.
    key_to_row : dict
        Item key -> row of ``embeddings`` (several keys may share a row).
    folder : pathlib.Path, optional
        Where the cache lives on disk (for messages).
    num_computed : int
        Rows computed by the call that produced this object (0 = reused).

    Example
    -------
    >>> cache = TeacherEmbeddingCache(torch.eye(3), {"a": 0, "b": 1, "c": 2, "d": 0})
    >>> cache.lookup(["c", "a", "d"])
    tensor([[0., 0., 1.],
            [1., 0., 0.],
            [1., 0., 0.]])
    """

    def __init__(self, embeddings, key_to_row, folder=None, num_computed=0):
        self.embeddings = embeddings
        self.key_to_row = dict(key_to_row)
        self.folder = None if folder is None else Path(folder)
        self.num_computed = int(num_computed)

    @property
    def embedding_dim(self):
        """Width D of the cached embeddings."""
        return self.embeddings.shape[1]

    @property
    def built(self):
        """Whether the call that returned this cache computed any row."""
        return self.num_computed > 0

    def __len__(self):
        return len(self.key_to_row)

    def __contains__(self, key):
        return key in self.key_to_row

    def keys(self):
        """Item keys held by the cache."""
        return self.key_to_row.keys()

    def _rows(self, keys):
        try:
            return [self.key_to_row[k] for k in keys]
        except KeyError as err:
            where = f" at '{self.folder}'" if self.folder else ""
            raise KeyError(
                f"item key {err.args[0]!r} is not in the teacher-embedding "
                f"cache{where} ({len(self)} keys); rebuild the cache with "
                "this item in its list"
            ) from None

    def lookup(self, keys, device=None):
        """Embeddings for a batch of item keys, in the order given.

        Arguments
        ---------
        keys : list of str
            Item keys (e.g. ``batch.id``).
        device : str or torch.device, optional
            Where to put the result.

        Returns
        -------
        torch.Tensor
            ``[len(keys), D]``.
        """
        rows = torch.tensor(self._rows(keys), dtype=torch.long)
        out = self.embeddings.index_select(0, rows)
        return out if device is None else out.to(device)

    def __getitem__(self, key):
        """One item's embedding ``[D]``."""
        return self.embeddings[self._rows([key])[0]]


def _check_items(items):
    key_to_path = {}
    for n, item in enumerate(items):
        try:
            key, path = item
        except (TypeError, ValueError):
            raise ValueError(
                f"cache item {n} must be a (key, path) pair, got {item!r}"
            ) from None
        key, path = str(key), os.fspath(path)
        old = key_to_path.setdefault(key, path)
        if old != path:
            raise ValueError(
                f"cache item key {key!r} is listed with two paths: '{old}' "
                f"and '{path}'"
            )
    if not key_to_path:
        raise ValueError("no items to cache: the item list is empty")
    return key_to_path


def _atomic_write(folder, final_name, write):
    """Writes via a temp file in ``folder`` renamed over ``final_name``, so a
    reader never sees a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix="-" + final_name)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(folder, final_name))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_json(obj, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


def _read_existing(folder, key):
    """Returns (embeddings, index) of a complete cache in folder, else None."""
    index_path = folder / INDEX_FILE
    if not index_path.is_file():
        return None
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
        if index.get("key") != key or index.get("format") != CACHE_FORMAT:
            return None
        stored = torch.load(
            folder / EMBEDDINGS_FILE, map_location="cpu", weights_only=True
        )
        embeddings = stored["embeddings"]
        # The two files are replaced one after the other; the shared build
        # id proves they come from the same build.
        if stored.get("build_id") != index["build_id"] or embeddings.shape[0] != len(
            index["paths"]
        ):
            logger.warning("Teacher cache at %s is inconsistent; rebuilding", folder)
            return None
    except Exception as err:  # unreadable or partial: rebuild, never crash
        logger.warning(
            "Teacher cache at %s is unreadable (%s); rebuilding", folder, err
        )
        return None
    return embeddings, index


def _compute(teacher, paths, path_keys, load_fn, batch_size, device, progressbar):
    """Runs the teacher over ``paths`` in batches; returns float32 CPU rows."""
    module = _base_module(teacher)
    params = list(module.parameters()) + list(module.buffers())
    home = params[0].device if params else torch.device("cpu")
    was_training = teacher.training
    teacher.eval()
    teacher.to(device)
    outputs = []
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(paths), disable=not progressbar, desc="teacher cache")
        with torch.no_grad():
            for start in range(0, len(paths), batch_size):
                chunk = paths[start : start + batch_size]
                images = []
                for path in chunk:
                    try:
                        images.append(np.asarray(load_fn(path)))
                    except Exception as err:
                        raise ValueError(
                            f"face image '{path}' (item key "
                            f"{path_keys[path]!r}) could not be loaded: {err}"
                        ) from err
                shapes = {im.shape for im in images}
                if len(shapes) > 1:
                    raise ValueError(
                        f"images in one batch have different shapes {sorted(shapes)} "
                        f"(e.g. '{chunk[0]}'); use a load_fn that resizes"
                    )
                batch = torch.from_numpy(np.stack(images)).to(device)
                emb = teacher(teacher.preprocess(batch))
                if emb.dim() != 2 or emb.shape[0] != len(chunk):
                    raise ValueError(
                        f"teacher returned shape {tuple(emb.shape)} for a batch "
                        f"of {len(chunk)} images; expected [{len(chunk)}, D]"
                    )
                finite = torch.isfinite(emb).all(dim=1)
                if not bool(finite.all()):
                    bad = chunk[int((~finite).nonzero()[0])]
                    raise ValueError(
                        f"teacher embedding of face image '{bad}' (item key "
                        f"{path_keys[bad]!r}) is not finite (NaN or inf)"
                    )
                outputs.append(emb.float().cpu())
                bar.update(len(chunk))
        bar.close()
    finally:
        teacher.to(home)
        teacher.train(was_training)
    return torch.cat(outputs) if outputs else None


def build_or_load_cache(
    teacher,
    items,
    cache_dir,
    load_fn=None,
    batch_size=64,
    extra_key=None,
    device="cpu",
    progressbar=True,
):
    """Loads the teacher embeddings of ``items``, computing what is missing.

    The cache folder is ``cache_dir/<TeacherClass>-<key[:16]>`` where the
    key hashes ``teacher.identity()``, the weights (``weights_sha256``) and
    ``extra_key``. If that folder holds every requested (key, path) pair,
    nothing is computed. Otherwise the teacher runs (batched, on
    ``device``, in eval mode, without gradients) over the unique paths the
    folder lacks, rows it already has are reused, and the folder is
    rewritten for exactly these items. Files are written to temp files and
    renamed, and the index (the file that marks a cache complete) is
    removed first and written last, so an interrupted build is never
    mistaken for a complete one.

    With DDP, call it once inside ``speechbrain.utils.distributed.run_on_main``
    and then on every process (which then only loads).

    Arguments
    ---------
    teacher : torch.nn.Module
        Encoder with ``preprocess`` and ``identity()`` (e.g. a
        ``FrozenTeacher``). It is moved to ``device`` for the build and
        back afterwards; its train/eval mode is restored.
    items : list of (str, str)
        (item key, image path) pairs; several keys may share a path, which
        is then embedded once.
    cache_dir : str or os.PathLike
        Parent folder of the cache folders (e.g. the experiment folder).
    load_fn : callable, optional
        ``path -> uint8 RGB [H, W, 3]``; default ``load_face_image`` at the
        teacher's ``input_size``. Describe a custom loader in ``extra_key``.
    batch_size : int
        Images per teacher forward.
    extra_key : any json-serialisable, optional
        Settings that change the teacher input but not the teacher
        (alignment template, crop policy, loader options).
    device : str or torch.device
        Where the teacher runs.
    progressbar : bool
        Shows a tqdm bar while computing.

    Returns
    -------
    TeacherEmbeddingCache
        ``num_computed`` tells how many rows this call computed.

    Raises
    ------
    ValueError
        On an empty or inconsistent item list, or an image that cannot be
        decoded (the message names the file and the item key).

    Example
    -------
    >>> import tempfile, os, cv2
    >>> from speechbrain_xmkd.teachers.face import SmallFaceResNet, FrozenTeacher
    >>> tmp = tempfile.mkdtemp()
    >>> a, b = os.path.join(tmp, "a.png"), os.path.join(tmp, "b.png")
    >>> for path in (a, b):
    ...     _ = cv2.imwrite(path, np.zeros((16, 16, 3), np.uint8))
    >>> encoder = SmallFaceResNet(8, (4, 4, 4, 4), input_size=16)
    >>> teacher = FrozenTeacher(encoder)
    >>> items = [("utt1", a), ("utt2", b), ("utt3", a)]
    >>> cache = build_or_load_cache(teacher, items, tmp, progressbar=False)
    >>> cache.num_computed, cache.lookup(["utt3", "utt2"]).shape
    (2, torch.Size([2, 8]))
    >>> build_or_load_cache(teacher, items, tmp, progressbar=False).num_computed
    0
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not callable(getattr(teacher, "preprocess", None)):
        raise TypeError(
            f"teacher {type(teacher).__name__} has no preprocess(images) "
            "method; wrap it or use one of speechbrain_xmkd.teachers.face"
        )
    key_to_path = _check_items(items)
    unique_paths = list(dict.fromkeys(key_to_path.values()))
    path_keys = {}
    for key, path in key_to_path.items():
        path_keys.setdefault(path, key)

    if load_fn is None:
        size = getattr(teacher, "input_size", None)
        load_fn = functools.partial(load_face_image, size=size)
        # Fail before hours of compute, not at the first missing file.
        for path in unique_paths:
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"face image '{path}' (item key {path_keys[path]!r}) "
                    "does not exist"
                )

    key_info = cache_key(teacher, extra_key)
    name = type(_base_module(teacher)).__name__
    folder = Path(cache_dir) / f"{name}-{key_info['key'][:16]}"

    existing = _read_existing(folder, key_info["key"])
    old_rows = {}
    if existing is not None:
        old_embeddings, index = existing
        old_rows = {p: i for i, p in enumerate(index["paths"])}
        old_keys = index["keys"]
        if all(
            k in old_keys and index["paths"][old_keys[k]] == p
            for k, p in key_to_path.items()
        ):
            logger.info("Reusing teacher-embedding cache %s", folder)
            return TeacherEmbeddingCache(old_embeddings, old_keys, folder, 0)

    todo = [p for p in unique_paths if p not in old_rows]
    logger.info(
        "Computing teacher embeddings for %d of %d faces into %s",
        len(todo),
        len(unique_paths),
        folder,
    )
    new = _compute(
        teacher, todo, path_keys, load_fn, int(batch_size), device, progressbar
    )
    # Rows come from the old cache or the new batch: one gather over both.
    pool = [old_embeddings] if existing is not None else []
    pool += [new] if new is not None else []
    pool = torch.cat(pool)
    offset = len(old_rows)
    new_rows = {p: offset + i for i, p in enumerate(todo)}
    source = [old_rows[p] if p in old_rows else new_rows[p] for p in unique_paths]
    embeddings = pool.index_select(0, torch.tensor(source, dtype=torch.long))
    dim = embeddings.shape[1]
    row_of = {p: i for i, p in enumerate(unique_paths)}
    key_to_row = {k: row_of[p] for k, p in key_to_path.items()}

    folder.mkdir(parents=True, exist_ok=True)
    # An old index next to new embeddings would describe the wrong rows.
    (folder / INDEX_FILE).unlink(missing_ok=True)
    build_id = uuid.uuid4().hex
    _atomic_write(
        folder,
        EMBEDDINGS_FILE,
        lambda tmp: torch.save({"embeddings": embeddings, "build_id": build_id}, tmp),
    )
    index = {
        "format": CACHE_FORMAT,
        "key": key_info["key"],
        "identity": key_info["identity"],
        "weights_sha256": key_info["weights_sha256"],
        "extra_key": key_info["extra_key"],
        "build_id": build_id,
        "embedding_dim": dim,
        "paths": unique_paths,
        "keys": key_to_row,
    }
    _atomic_write(folder, INDEX_FILE, lambda tmp: _write_json(index, tmp))
    return TeacherEmbeddingCache(embeddings, key_to_row, folder, len(todo))
