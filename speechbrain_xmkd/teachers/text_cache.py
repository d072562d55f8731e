"""Class-prompt embedding cache: E_T for every (class, template) pair, computed once.

A text teacher reads only ``C x T`` distinct prompts (C classes, T
templates), so every embedding it can ever produce is computed before
training and stored as one ``[C, T, D]`` tensor; a training step then reads
``E_T[label, template]`` (an index, no text encoder in the loop). Like the
face cache (:mod:`speechbrain_xmkd.teachers.cache`) the folder is named by
a key over the teacher's ``identity()``, a SHA-256 of its weights, and here
the templates and the class names: any change gets a new folder, an
unchanged setting reuses the file.
"""

import json
import logging
from pathlib import Path

import torch

from speechbrain_xmkd.teachers.cache import _atomic_write, cache_key
from speechbrain_xmkd.teachers.prompts import build_prompts, check_class_names, get_templates

logger = logging.getLogger(__name__)

PROMPT_FORMAT = 1
EMBEDDINGS_FILE = "prompt_embeddings.pt"
INFO_FILE = "info.json"


class PromptEmbeddings:
    """Teacher embeddings of every (class, template) prompt, ``[C, T, D]``.

    Arguments
    ---------
    embeddings : torch.Tensor
        ``[num_classes, num_templates, dim]``.
    class_names : list of str
        Name of each class, in class-index order.
    templates : list of str
        The templates, in template-index order.
    folder : pathlib.Path, optional
        Where the cache lives (for messages).
    num_computed : int
        Prompts embedded by the call that produced this object (0: reused).

    Example
    -------
    >>> table = PromptEmbeddings(torch.arange(12.0).reshape(2, 3, 2), ["cat", "dog"], ["a {}.", "the {}.", "my {}."])
    >>> table.lookup(torch.tensor([1, 0]), torch.tensor([2, 0]))
    tensor([[10., 11.],
            [ 0.,  1.]])
    >>> table.class_means()
    tensor([[2., 3.],
            [8., 9.]])
    """

    def __init__(self, embeddings, class_names, templates, folder=None, num_computed=0):
        if embeddings.dim() != 3 or embeddings.shape[:2] != (len(class_names), len(templates)):
            raise ValueError(
                f"prompt embeddings of shape {tuple(embeddings.shape)} do not match "
                f"{len(class_names)} classes x {len(templates)} templates"
            )
        self.embeddings = embeddings
        self.class_names = list(class_names)
        self.templates = list(templates)
        self.folder = None if folder is None else Path(folder)
        self.num_computed = int(num_computed)

    @property
    def num_classes(self):
        return self.embeddings.shape[0]

    @property
    def num_templates(self):
        return self.embeddings.shape[1]

    @property
    def embedding_dim(self):
        return self.embeddings.shape[2]

    def to(self, device):
        """The same table with its tensor on ``device``."""
        return PromptEmbeddings(
            self.embeddings.to(device), self.class_names, self.templates, self.folder, self.num_computed
        )

    def lookup(self, labels, template_indices):
        """``E_T`` of each sample's (label, template) pair, ``[batch, dim]``.

        Arguments
        ---------
        labels : torch.Tensor
            Class indices ``[batch]``.
        template_indices : torch.Tensor
            Template indices ``[batch]``.
        """
        labels = labels.reshape(-1).to(self.embeddings.device, torch.long)
        template_indices = template_indices.reshape(-1).to(self.embeddings.device, torch.long)
        flat = labels * self.num_templates + template_indices
        return self.embeddings.reshape(-1, self.embedding_dim).index_select(0, flat)

    def class_means(self):
        """Mean embedding over templates, ``[C, D]`` (CLIP's prompt ensemble)."""
        return self.embeddings.mean(dim=1)


def _read(path, key, num_classes, num_templates):
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if stored.get("key") != key or stored.get("format") != PROMPT_FORMAT:
            return None
        embeddings = stored["embeddings"]
        if embeddings.shape[:2] != (num_classes, num_templates):
            logger.warning("Prompt cache %s has the wrong shape; rebuilding", path)
            return None
        return embeddings
    except Exception as err:  # unreadable or partial: rebuild, never crash
        logger.warning("Prompt cache %s is unreadable (%s); rebuilding", path, err)
        return None


def build_or_load_prompt_cache(
    teacher, class_names, templates, cache_dir, batch_size=256, device="cpu"
):
    """Loads the ``[C, T, D]`` prompt embeddings, computing them if missing.

    The folder is ``cache_dir/<TeacherClass>-<key[:16]>``, the key hashing
    the teacher's ``identity()``, its weights (``weights_sha256``), the
    templates and the class names. The file is written to a temporary name
    and renamed, so an interrupted build is never read as complete. With
    DDP, call it inside ``run_on_main`` first, then on every process.

    Arguments
    ---------
    teacher : TextEncoder
        Frozen encoder with ``encode(texts, batch_size, device)`` and
        ``identity()`` (see :mod:`speechbrain_xmkd.teachers.text`).
    class_names : list of str
        One name per class, in class-index order (``"maple tree"``).
    templates : str or list of str
        ``"clip80"`` or format strings with one ``{}``.
    cache_dir : str or os.PathLike
        Parent folder of the cache folders.
    batch_size : int
        Prompts per teacher forward.
    device : str or torch.device
        Where the teacher runs.

    Returns
    -------
    PromptEmbeddings
        ``num_computed`` is the number of prompts embedded by this call.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_xmkd.teachers.text import HashedBagOfWordsEncoder
    >>> folder = tempfile.mkdtemp()
    >>> teacher = HashedBagOfWordsEncoder(dim=8)
    >>> table = build_or_load_prompt_cache(teacher, ["red circle", "blue square"], "clip7", folder)
    >>> table.embeddings.shape, table.num_computed
    (torch.Size([2, 7, 8]), 14)
    >>> build_or_load_prompt_cache(teacher, ["red circle", "blue square"], "clip7", folder).num_computed
    0
    """
    names = check_class_names(class_names)
    templates = get_templates(templates)
    key_info = cache_key(teacher, {"kind": "class-prompts", "class_names": names, "templates": templates})
    folder = Path(cache_dir) / f"{type(teacher).__name__}-{key_info['key'][:16]}"
    path = folder / EMBEDDINGS_FILE
    embeddings = _read(path, key_info["key"], len(names), len(templates))
    if embeddings is not None:
        logger.info("Reusing prompt-embedding cache %s", folder)
        return PromptEmbeddings(embeddings, names, templates, folder, 0)

    prompts = build_prompts(names, templates)
    logger.info(
        "Embedding %d prompts (%d classes x %d templates) with %s into %s",
        len(prompts), len(names), len(templates), type(teacher).__name__, folder,
    )
    flat = teacher.encode(prompts, batch_size=batch_size, device=device)
    embeddings = flat.reshape(len(names), len(templates), -1).contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    stored = {
        "format": PROMPT_FORMAT,
        "key": key_info["key"],
        "embeddings": embeddings,
        "class_names": names,
        "templates": templates,
    }
    _atomic_write(folder, EMBEDDINGS_FILE, lambda tmp: torch.save(stored, tmp))
    info = {
        "format": PROMPT_FORMAT,
        "key": key_info["key"],
        "identity": key_info["identity"],
        "weights_sha256": key_info["weights_sha256"],
        "num_classes": len(names),
        "num_templates": len(templates),
        "embedding_dim": int(embeddings.shape[2]),
        "example_prompt": prompts[0],
    }
    _atomic_write(folder, INFO_FILE, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2)))
    return PromptEmbeddings(embeddings, names, templates, folder, len(prompts))
