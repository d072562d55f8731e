"""A finished training run's folder, read without rebuilding the experiment.

``sb.create_experiment_directory`` saves the training yaml, with the
command-line overrides applied and every ``!ref`` resolved, as
``<output_folder>/hyperparams.yaml``. Loading it with hyperpyyaml would build
the whole experiment (seed, data-preparation functions from the recipe
folder, distiller, loggers), so the exporters read it as tagged YAML data
instead: :class:`Tagged` keeps ``!new:``/``!name:``/``!apply:`` nodes as they
are, and only the nodes being exported are ever built.
"""

import io
import json
import sys
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.constructor import SafeConstructor
from ruamel.yaml.nodes import MappingNode, SequenceNode
from ruamel.yaml.representer import SafeRepresenter

HYPERPARAMS = "hyperparams.yaml"


class Tagged:
    """A YAML node with a hyperpyyaml tag, e.g. ``!new:speechbrain.lobes.features.Fbank``.

    Arguments
    ---------
    tag : str
        The full tag, with its ``!``.
    value : dict, list or str
        The node's content (keyword arguments, positional arguments, scalar).

    Example
    -------
    >>> node = Tagged("!new:torch.nn.Linear", {"in_features": 2, "out_features": 3})
    >>> node.kind, node.target
    ('new', 'torch.nn.Linear')
    """

    def __init__(self, tag, value):
        self.tag = tag
        self.value = value

    @property
    def kind(self):
        """``new``, ``name``, ``apply``, ... (the part before the colon)."""
        return self.tag[1:].split(":", 1)[0]

    @property
    def target(self):
        """The dotted import path after the colon ('' for e.g. ``!PLACEHOLDER``)."""
        parts = self.tag[1:].split(":", 1)
        return parts[1] if len(parts) == 2 else ""

    def __repr__(self):
        return f"Tagged({self.tag!r}, {self.value!r})"


def _construct_tagged(constructor, tag_suffix, node):
    if isinstance(node, MappingNode):
        value = constructor.construct_mapping(node, deep=True)
    elif isinstance(node, SequenceNode):
        value = constructor.construct_sequence(node, deep=True)
    else:
        value = constructor.construct_scalar(node)
    return Tagged("!" + tag_suffix, value)


class _TaggedConstructor(SafeConstructor):
    pass


_TaggedConstructor.add_multi_constructor("!", _construct_tagged)


class _TaggedRepresenter(SafeRepresenter):
    def ignore_aliases(self, data):
        # Shared nodes are written out in full: every exported node stands alone.
        return True


def _represent_tagged(representer, data):
    if isinstance(data.value, dict):
        return representer.represent_mapping(data.tag, data.value)
    if isinstance(data.value, (list, tuple)):
        return representer.represent_sequence(data.tag, data.value)
    return representer.represent_scalar(data.tag, str(data.value or ""))


def _represent_list(representer, data):
    # [5, 3, 3] on one line, as people write them; nested lists in block style.
    flat = all(not isinstance(item, (dict, list, tuple, Tagged)) for item in data)
    return representer.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_TaggedRepresenter.add_representer(Tagged, _represent_tagged)
_TaggedRepresenter.add_representer(list, _represent_list)


def _yaml():
    # ruamel (YAML 1.2), as hyperpyyaml: ``1e-5`` stays a float both ways.
    yaml = YAML(typ="safe", pure=True)
    yaml.Constructor = _TaggedConstructor
    yaml.Representer = _TaggedRepresenter
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False  # keys in the training yaml's order
    yaml.indent(mapping=4, sequence=4, offset=2)
    return yaml


def read_tagged_yaml(path):
    """Reads a hyperpyyaml file as data: tagged nodes become :class:`Tagged`.

    Nothing is imported or built, so a run's yaml reads the same on a
    machine without its data, recipe folder or teacher weights.

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "h.yaml")
    >>> _ = open(path, "w").write("n: 4\\nlin: !new:torch.nn.Linear\\n    in_features: !ref <n>\\n")
    >>> data = read_tagged_yaml(path)
    >>> data["n"], data["lin"].target, data["lin"].value["in_features"].tag
    (4, 'torch.nn.Linear', '!ref')
    """
    with open(path, encoding="utf-8") as handle:
        return _yaml().load(handle)


def dump_tagged_yaml(data):
    """YAML text for ``data`` (a dict that may hold :class:`Tagged` nodes).

    Example
    -------
    >>> print(dump_tagged_yaml({"lin": Tagged("!new:torch.nn.Linear", {"in_features": 2})}), end="")
    lin: !new:torch.nn.Linear
        in_features: 2
    """
    stream = io.StringIO()
    _yaml().dump(data, stream)
    return stream.getvalue()


def concrete_node(node, key):
    """The ``!new:`` node that builds ``node``, with ``select(...)`` resolved.

    Training yamls choose between alternatives with
    ``!apply:speechbrain_xmkd.config.select [options, name, what]``, whose
    options are ``!name:`` partials; the exported yaml must name the chosen
    class itself so that it loads with SpeechBrain alone.

    Arguments
    ---------
    node : Tagged
        The node as read by :func:`read_tagged_yaml`.
    key : str
        Its yaml key, for error messages.

    Returns
    -------
    Tagged
        A ``!new:`` node with the same class and arguments.

    Example
    -------
    >>> students = {"small": Tagged("!name:torch.nn.Linear", {"in_features": 2, "out_features": 3})}
    >>> concrete_node(Tagged("!apply:speechbrain_xmkd.config.select", [students, "small", "student"]), "m")
    Tagged('!new:torch.nn.Linear', {'in_features': 2, 'out_features': 3})
    """
    if not isinstance(node, Tagged):
        raise ValueError(f"'{key}' in {HYPERPARAMS} is {node!r}, not an object built with !new:")
    if node.kind == "new":
        return node
    if node.kind == "name":  # a partial that select() calls with no arguments
        return Tagged("!new:" + node.target, node.value if node.value not in ("", None) else {})
    if node.kind == "apply" and node.target == "speechbrain_xmkd.config.select":
        options, name = node.value[0], node.value[1]
        if isinstance(name, bool):  # select() looks booleans up as 'true'/'false'
            name = str(name).lower()
        if name not in options:
            raise ValueError(f"'{key}' selects '{name}', which is not one of {sorted(options)}")
        return concrete_node(options[name], key)
    raise ValueError(
        f"'{key}' in {HYPERPARAMS} is built by {node.tag}; the exporter understands "
        "!new:, !name: and !apply:speechbrain_xmkd.config.select"
    )


def evaluate_arguments(node, key, search_path=()):
    """``node`` with every ``!apply:`` inside its arguments replaced by its value.

    A training yaml may compute a constructor argument, e.g.
    ``out_features: !apply:synthetic_images.count_classes [...]``; the
    exported model must not depend on the recipe's modules, so the value is
    computed here (with ``search_path`` importable) and written as is.

    Arguments
    ---------
    node : Tagged
        A ``!new:`` node (from :func:`concrete_node`).
    key : str
        Its yaml key, for error messages.
    search_path : sequence of str
        Folders to make importable meanwhile (e.g. :func:`recipe_folder`).

    Returns
    -------
    Tagged

    Example
    -------
    >>> node = Tagged("!new:torch.nn.Linear", {"in_features": Tagged("!apply:len", [[1, 2, 3]])})
    >>> evaluate_arguments(node, "head")
    Tagged('!new:torch.nn.Linear', {'in_features': 3})
    """

    def walk(value):
        if isinstance(value, Tagged) and value.kind == "apply":
            return _evaluate(value, key, search_path)
        if isinstance(value, Tagged):
            return Tagged(value.tag, walk(value.value))
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(node)


def _evaluate(node, key, search_path):
    from hyperpyyaml import load_hyperpyyaml

    added = [str(p) for p in search_path if str(p) not in sys.path]
    sys.path[:0] = added
    try:
        value = load_hyperpyyaml(dump_tagged_yaml({"value": node}))["value"]
    except Exception as err:
        raise ValueError(f"an argument of '{key}' is computed by {node.tag}, which failed here: {err}") from None
    finally:
        for path in added:
            sys.path.remove(path)
    if not is_plain(value):
        raise ValueError(f"an argument of '{key}' is computed by {node.tag} and is not plain data: {value!r}")
    return value


def is_plain(value):
    """Whether ``value`` is JSON-like data (no objects, no tags).

    Example
    -------
    >>> is_plain({"a": [1, 2.0, "x", None]}), is_plain({"a": Tagged("!new:a.B", {})})
    (True, False)
    """
    if isinstance(value, (list, tuple)):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    return value is None or isinstance(value, (bool, int, float, str))


def recipe_folder(run_dir):
    """The recipe folder of a run, from the header SpeechBrain writes on its yaml copy.

    ``sb.create_experiment_directory`` starts hyperparams.yaml with
    ``# Generated <date> from:`` and ``# <path of the training yaml>``; the
    recipe folder (``recipes/X``) is that yaml's grandparent. Returns None if
    the header is missing or the folder is gone.
    """
    path = Path(run_dir) / HYPERPARAMS
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as handle:
        head = [handle.readline() for _ in range(2)]
    if not head[0].startswith("# Generated") or not head[1].startswith("# "):
        return None
    folder = Path(head[1][2:].strip()).parent.parent
    return folder if folder.is_dir() else None


def tagged_targets(node):
    """Every import path named by the tags inside ``node`` (recursively).

    Example
    -------
    >>> sorted(tagged_targets(Tagged("!new:a.B", {"act": Tagged("!name:torch.nn.ReLU", "")})))
    ['a.B', 'torch.nn.ReLU']
    """
    found = set()
    if isinstance(node, Tagged):
        if node.target:
            found.add(node.target)
        found |= tagged_targets(node.value)
    elif isinstance(node, dict):
        for value in node.values():
            found |= tagged_targets(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            found |= tagged_targets(value)
    return found


def read_run(output_folder, required_keys=()):
    """Reads ``<output_folder>/hyperparams.yaml``; checks that it is a training run.

    Arguments
    ---------
    output_folder : str
        A training output folder (``--output_folder`` of the recipe).
    required_keys : sequence of str
        Top-level yaml keys the caller needs.

    Returns
    -------
    dict
        The tagged yaml data.

    Raises
    ------
    FileNotFoundError
        The folder or its hyperparams.yaml is missing.
    ValueError
        Required keys are missing (all are named).
    """
    folder = Path(output_folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"training output folder '{folder}' does not exist")
    path = folder / HYPERPARAMS
    if not path.is_file():
        raise FileNotFoundError(
            f"'{folder}' is not a training output folder: it has no {HYPERPARAMS} "
            "(the recipe writes one at the start of training)"
        )
    data = read_tagged_yaml(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a yaml mapping")
    missing = [key for key in required_keys if key not in data]
    if missing:
        raise ValueError(f"{path} lacks the key(s) {', '.join(missing)}: not a run of a supported recipe")
    return data


def best_checkpoint(save_folder, key="ErrorRate", required_files=()):
    """The checkpoint with the lowest ``key`` in its meta (CKPT.yaml).

    Uses SpeechBrain's own :class:`~speechbrain.utils.checkpoints.Checkpointer`
    lookup, so the choice is the one the recipe's evaluation makes.

    Arguments
    ---------
    save_folder : str
        The run's ``save_folder`` (holds ``CKPT+*`` folders).
    key : str
        Meta key to minimise.
    required_files : sequence of str
        Files the checkpoint folder must hold (e.g. ``embedding_model.ckpt``).

    Returns
    -------
    speechbrain.utils.checkpoints.Checkpoint
        ``(path, meta, paramfiles)``.
    """
    from speechbrain.utils.checkpoints import Checkpointer

    save_folder = Path(save_folder)
    checkpoints = sorted(save_folder.glob("CKPT+*")) if save_folder.is_dir() else []
    if not checkpoints:
        raise FileNotFoundError(
            f"no checkpoint (CKPT+* folder) in '{save_folder}': the run has not finished an epoch"
        )
    found = Checkpointer(save_folder).find_checkpoint(min_key=key)
    if found is None:
        keys = sorted({k for c in checkpoints for k in _meta_keys(c)})
        raise ValueError(
            f"no checkpoint in '{save_folder}' has '{key}' in its CKPT.yaml; keys present: {', '.join(keys)}"
        )
    missing = [name for name in required_files if not (found.path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint '{found.path}' lacks {', '.join(missing)}")
    return found


def _meta_keys(checkpoint_dir):
    meta = checkpoint_dir / "CKPT.yaml"
    if not meta.is_file():
        return []
    data = YAML(typ="safe", pure=True).load(meta.read_text(encoding="utf-8")) or {}
    return list(data)


def read_results(run_dir):
    """``<run_dir>/results.json`` (verification results), ``{}`` if there is none."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
