"""Safe loading of teacher weights from checkpoint files.

Teacher checkpoints come from other projects (face.evoLVe, facenet-pytorch,
our own face-teacher recipe) and are loaded with ``weights_only=True``, so a
file that carries pickled Python objects is refused instead of executed.
Every problem is reported once, up front, with the file name and the keys
involved, and nothing is copied into the model unless the whole file fits.

Authors
 * speechbrain-xmkd contributors
"""

import fnmatch
import os
import pickle
from collections.abc import Mapping

import torch

# Containers that training scripts commonly wrap a state_dict in, tried in
# this order (``{"state_dict": ..., "epoch": 3}``, ``{"model": ...}``).
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")

_BN_COUNTER = "num_batches_tracked"


class CheckpointError(ValueError):
    """A checkpoint file could not be read or does not fit the model."""


def read_state_dict(path):
    """Reads a checkpoint file into a flat ``{name: tensor}`` mapping.

    The file is loaded on the CPU with ``weights_only=True`` and unwrapped
    from the usual containers (see ``CONTAINER_KEYS``).

    Arguments
    ---------
    path : str or os.PathLike
        A file written by ``torch.save``.

    Returns
    -------
    dict
        Parameter and buffer names mapped to tensors, in file order.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        If the file is unreadable, holds pickled Python objects, or holds no
        state_dict.

    Example
    -------
    >>> import tempfile, os
    >>> tmp = tempfile.mkdtemp()
    >>> f = os.path.join(tmp, "w.pt")
    >>> torch.save({"state_dict": torch.nn.Linear(2, 3).state_dict()}, f)
    >>> sorted(read_state_dict(f))
    ['bias', 'weight']
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file '{path}' does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only=True raises this when the pickle references classes
        # or functions; unpickling them could run arbitrary code.
        raise CheckpointError(
            f"refusing to load '{path}': it is not a plain weights file (it "
            "contains pickled Python objects, which weights_only=True loading "
            "does not execute). If you trust the file, re-save only its "
            "tensors, e.g. torch.save(torch.load(path, weights_only=False)"
            ".state_dict(), new_path). Details: "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from err
    except Exception as err:
        # torch.load fails in many ways on foreign files (RuntimeError,
        # EOFError, BadZipFile, even IndexError from the unpickler).
        raise CheckpointError(
            f"could not read checkpoint '{path}' (not a torch.save file, or "
            f"truncated): {type(err).__name__}: {err}"
        ) from err
    return _unwrap(obj, path)


def _is_state_dict(obj):
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(
            isinstance(k, str) and isinstance(v, torch.Tensor)
            for k, v in obj.items()
        )
    )


def _unwrap(obj, path):
    seen = []
    while not _is_state_dict(obj):
        if not isinstance(obj, Mapping):
            raise CheckpointError(
                f"checkpoint '{path}' holds a {type(obj).__name__}, not a "
                "state_dict (a mapping of parameter names to tensors)"
            )
        inner = next((k for k in CONTAINER_KEYS if k in obj), None)
        if inner is None:
            keys = ", ".join(repr(k) for k in list(obj)[:10])
            where = "".join(f"[{k!r}]" for k in seen)
            raise CheckpointError(
                f"checkpoint '{path}'{where} holds no state_dict: top-level "
                f"keys are {keys or '(none)'}; expected parameter names "
                f"mapped to tensors or one of {list(CONTAINER_KEYS)}"
            )
        seen.append(inner)
        obj = obj[inner]
    return dict(obj)


def _apply_key_map(key, key_map):
    if key_map is None:
        return key
    if callable(key_map):
        return key_map(key)
    # Longest prefix first, so {"a.": .., "a.b.": ..} maps "a.b.x" by "a.b.".
    for old in sorted(key_map, key=len, reverse=True):
        if key.startswith(old):
            return key_map[old] + key[len(old) :]
    return key


def _ignored(key, patterns):
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _listing(keys, max_listed):
    shown = ", ".join(keys[:max_listed])
    more = len(keys) - max_listed
    return shown + (f", ... ({more} more)" if more > 0 else "")


def _prefix_hint(unexpected, missing):
    """Suggests a prefix to strip or add when it would explain the mismatch."""
    if not unexpected or not missing:
        return ""
    heads = {k.split(".", 1)[0] for k in unexpected if "." in k}
    if len(heads) == 1:
        head = heads.pop() + "."
        stripped = {k[len(head) :] for k in unexpected}
        if stripped & set(missing):
            return (
                f"\n  hint: file keys carry an extra '{head}' prefix; pass "
                f"strip_prefixes=('{head}',)"
            )
    return ""


def load_state_dict_file(
    path,
    model,
    *,
    strip_prefixes=("module.",),
    ignore=(),
    key_map=None,
    max_listed=10,
):
    """Loads a checkpoint file into ``model``, all or nothing.

    Steps: read with ``torch.load(map_location="cpu", weights_only=True)``,
    unwrap ``{"state_dict": ...}`` / ``{"model": ...}`` containers, strip
    ``strip_prefixes`` (DataParallel's ``module.``), rename with ``key_map``,
    drop ``ignore`` keys, then check names and shapes against ``model``.
    BatchNorm ``num_batches_tracked`` counters may be absent from the file
    (older PyTorch did not save them; they do not affect inference); the
    model keeps its own. Any other difference raises before a single
    tensor is copied.

    Arguments
    ---------
    path : str or os.PathLike
        Checkpoint file.
    model : torch.nn.Module
        Module to load into (in place).
    strip_prefixes : tuple of str
        Prefixes removed from file keys that are not model keys as they
        stand (so a model with a real submodule named ``module`` is safe).
    ignore : tuple of str
        ``fnmatch`` patterns (e.g. ``"logits.*"``). File keys matching them
        are dropped; model keys matching them may be absent from the file
        and keep their current values.
    key_map : dict or callable, optional
        Renames file keys after prefix stripping: a callable
        ``key -> new_key``, or a dict of ``{old_prefix: new_prefix}``
        (longest matching prefix wins).
    max_listed : int
        How many keys of each kind the error message lists.

    Returns
    -------
    dict
        ``{"loaded": n_tensors, "ignored": [file keys dropped],
        "kept_from_model": [model keys not in the file]}``.

    Raises
    ------
    CheckpointError
        Names the file and lists missing keys, unexpected keys and shape
        mismatches (key, file shape, model shape), each with its count.

    Example
    -------
    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "w.pt")
    >>> src = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    >>> torch.save({"model": torch.nn.DataParallel(src).state_dict()}, f)
    >>> dst = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    >>> load_state_dict_file(f, dst)["loaded"]
    7
    >>> torch.equal(dst[0].weight, src[0].weight)
    True
    >>> load_state_dict_file(f, torch.nn.Linear(2, 4))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    speechbrain_xmkd...CheckpointError: checkpoint '...' does not fit Linear: ...
    """
    path = os.fspath(path)
    file_sd = read_state_dict(path)
    model_sd = model.state_dict()

    renamed = {}
    for key, value in file_sd.items():
        new = key
        changed = True
        while changed and new not in model_sd:
            changed = False
            for prefix in strip_prefixes:
                if prefix and new.startswith(prefix):
                    new = new[len(prefix) :]
                    changed = True
        new = _apply_key_map(new, key_map)
        if new in renamed:
            raise CheckpointError(
                f"checkpoint '{path}': two file keys map to model key "
                f"'{new}' after prefix stripping / key_map"
            )
        renamed[new] = value

    ignored = [k for k in renamed if _ignored(k, ignore)]
    for k in ignored:
        del renamed[k]

    missing, kept = [], []
    for k in model_sd:
        if k in renamed:
            continue
        if k.endswith(_BN_COUNTER) or _ignored(k, ignore):
            kept.append(k)
        else:
            missing.append(k)
    unexpected = [
        k for k in renamed if k not in model_sd and not k.endswith(_BN_COUNTER)
    ]
    mismatched = [
        (k, tuple(renamed[k].shape), tuple(model_sd[k].shape))
        for k in renamed
        if k in model_sd and renamed[k].shape != model_sd[k].shape
    ]

    if missing or unexpected or mismatched:
        lines = [f"checkpoint '{path}' does not fit {type(model).__name__}:"]
        if missing:
            lines.append(
                f"  {len(missing)} missing key(s) (in the model, not in the "
                f"file): {_listing(missing, max_listed)}"
            )
        if unexpected:
            lines.append(
                f"  {len(unexpected)} unexpected key(s) (in the file, not in "
                f"the model): {_listing(unexpected, max_listed)}"
            )
        if mismatched:
            shown = [
                f"{k}: file {f} vs model {m}"
                for k, f, m in mismatched[:max_listed]
            ]
            more = len(mismatched) - max_listed
            lines.append(
                f"  {len(mismatched)} shape mismatch(es): "
                + "; ".join(shown)
                + (f"; ... ({more} more)" if more > 0 else "")
            )
        raise CheckpointError(
            "\n".join(lines) + _prefix_hint(unexpected, missing)
        )

    # Counters the file lacks keep the model's value; counters the model
    # lacks (BatchNorm without running stats) are dropped.
    final = {k: v for k, v in renamed.items() if k in model_sd}
    for k in kept:
        final[k] = model_sd[k]
    # Names and shapes were all checked above, so this cannot stop halfway.
    model.load_state_dict(final, strict=True)
    return {
        "loaded": len(final) - len(kept),
        "ignored": ignored,
        "kept_from_model": kept,
    }
