"""Share trained students: a run becomes a model folder SpeechBrain loads, then the Hub.

Only the student crosses over. The face teacher, the projection head and the
distillation losses were training aids (Zhao et al., 2025): the exported
speaker model is what SpeechBrain's own
:class:`~speechbrain.inference.speaker.SpeakerRecognition` and
:class:`~speechbrain.inference.classifiers.EncoderClassifier` expect::

    model_dir/
        hyperparams.yaml         inference yaml: features, student, classifier, pretrainer
        embedding_model.ckpt     the student (best checkpoint of the run)
        classifier.ckpt          its speaker head (training speakers)
        mean_var_norm.ckpt       feature normaliser state
        mean_var_norm_emb.ckpt   global embedding mean, fit here on training utterances
        label_encoder.txt        training speaker ids (label_encoder.ckpt: the same
                                 file under the name SpeechBrain's Pretrainer fetches)
        README.md                model card

The yaml names no ``paths``: every loadable is ``<source>/<name>.ckpt``, so a
local folder never contacts the Hub and the same folder, pushed, loads by id.

Image students: :func:`export_image_run` turns a run of recipes/CIFAR100
into the plain folder of :mod:`speechbrain_xmkd.image_export` (whose
:func:`export_image_model` and :class:`ImageClassifier` are re-exported
here); :func:`export_run` picks the exporter by the run's yaml.
"""

import csv
import logging
import random
import shutil
import uuid
from pathlib import Path

import torch

from .audio import AudioError, read_segment
from .image_export import ImageClassifier, StudentClassifier, export_image_model
from .model_card import image_run_description, speaker_model_card
from .run_folder import (
    HYPERPARAMS,
    best_checkpoint,
    concrete_node,
    dump_tagged_yaml,
    evaluate_arguments,
    is_plain,
    read_results,
    read_run,
    recipe_folder,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ImageClassifier",
    "export_image_model",
    "export_image_run",
    "export_run",
    "export_speaker_model",
    "push_to_hub",
    "require_hub_token",
]

# What a speaker run must have for its student to be exported.
SPEAKER_KEYS = ("compute_features", "mean_var_norm", "embedding_model", "classifier", "save_folder")
# Checkpoint files copied as is (run name -> exported name).
CHECKPOINT_FILES = {"embedding_model.ckpt": "embedding_model.ckpt", "classifier.ckpt": "classifier.ckpt"}
NORMALIZER_FILE = "normalizer.ckpt"
LABEL_ENCODER = "label_encoder.txt"
# What an image run (recipes/CIFAR100/train.py) must have; its class list
# (`classes_file`) is what tells it from a speaker run (see export_run).
IMAGE_KEYS = ("embedding_model", "classifier", "normalize", "test_transform", "save_folder")
IMAGE_RUN_KEY = "classes_file"

LOGIN_HELP = (
    "no Hugging Face token found: log in with `hf auth login` (or the older "
    "`huggingface-cli login`), or set HF_TOKEN to a token with write access"
)


# ----------------------------------------------------------------------------
# Speaker students
def export_speaker_model(
    output_folder,
    out_dir,
    ckpt_key=None,
    overwrite=False,
    norm_utterances=2000,
    data_folder=None,
    train_annotation=None,
    device="cpu",
    progressbar=True,
):
    """Writes the student of a speaker run as a SpeechBrain model folder.

    Arguments
    ---------
    output_folder : str
        The training run (``--output_folder`` of ``recipes/VoxCeleb/train.py``).
    out_dir : str
        Folder to create (see the module docstring for its content).
    ckpt_key : str, optional
        CKPT.yaml meta key to minimise when choosing the checkpoint; default
        the run's ``ckpt_key`` or ``ErrorRate`` (the recipe's own choice).
    overwrite : bool
        Replace ``out_dir`` if it holds a previous export.
    norm_utterances : int
        Training utterances (a seeded sample of the run's train.csv, whole
        segments) whose embeddings fit ``mean_var_norm_emb``.
    data_folder : str, optional
        Where ``$data_root`` in train.csv points now, if the data moved.
    train_annotation : str, optional
        The train.csv to sample, if it moved.
    device : str
        Where embeddings are computed (``cpu``, ``cuda:0``).
    progressbar : bool
        Show a progress bar while embedding.

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Example
    -------
    >>> export_speaker_model("no/such/run", "out")
    Traceback (most recent call last):
    ...
    FileNotFoundError: training output folder 'no/such/run' does not exist
    """
    run_dir = Path(output_folder)
    run = read_run(run_dir, SPEAKER_KEYS)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    save_folder = _relocated(run["save_folder"], run.get("output_folder"), run_dir)
    key = ckpt_key or run.get("ckpt_key") or "ErrorRate"
    checkpoint = best_checkpoint(save_folder, key, required_files=list(CHECKPOINT_FILES))
    labels = save_folder / LABEL_ENCODER
    if not labels.is_file():
        raise FileNotFoundError(f"'{run_dir}' has no {save_folder.name}/{LABEL_ENCODER} (the recipe writes it)")
    normalizer = checkpoint.path / NORMALIZER_FILE
    has_normalizer = normalizer.is_file()

    nodes = _exported_nodes(run, run_dir, SPEAKER_KEYS[:4])
    yaml_text = inference_yaml(run, nodes, checkpoint, key, has_normalizer, _eer_threshold(run_dir))
    modules = _build(yaml_text)
    _load_module(modules["embedding_model"], checkpoint.path / "embedding_model.ckpt", "embedding_model")
    _load_module(modules["classifier"], checkpoint.path / "classifier.ckpt", "classifier")
    if has_normalizer:
        _load_normalizer(modules["mean_var_norm"], normalizer)

    rows = _training_rows(run, run_dir, data_folder, train_annotation)
    sample = _sample(rows, norm_utterances, seed=int(run.get("seed", 0) or 0))
    try:
        embeddings = embed_rows(modules, sample, int(run.get("sample_rate", 16000)), device, progressbar)
    except AudioError as err:
        raise AudioError(
            f"{err}. mean_var_norm_emb is fit on training utterances: if the data moved, pass "
            "data_folder= (--data_folder) and train_annotation= (--train_csv)"
        ) from None
    _check_classes(modules, embeddings, labels)

    staging = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex}.partial"
    staging.mkdir(parents=True)
    try:
        for source, target in CHECKPOINT_FILES.items():
            shutil.copyfile(checkpoint.path / source, staging / target)
        if has_normalizer:
            shutil.copyfile(normalizer, staging / "mean_var_norm.ckpt")
        shutil.copyfile(labels, staging / LABEL_ENCODER)
        # Pretrainer fetches `<source>/<loadable>.ckpt` when the yaml names no paths.
        shutil.copyfile(labels, staging / "label_encoder.ckpt")
        fit_embedding_normalizer(embeddings).to("cpu")._save(staging / "mean_var_norm_emb.ckpt")
        (staging / HYPERPARAMS).write_text(yaml_text, encoding="utf-8")
        card = speaker_model_card(run, run_dir, checkpoint, key, nodes, len(sample))
        (staging / "README.md").write_text(card, encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.replace(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info("exported the student of %s (%s) to %s", run_dir, checkpoint.path.name, out_dir)
    return out_dir


def inference_yaml(run, nodes, checkpoint, key, has_normalizer=True, threshold=None):
    """The inference hyperparams.yaml text for a speaker student.

    Arguments
    ---------
    run : dict
        The run's tagged hyperparams (for the sample rate).
    nodes : dict
        ``compute_features``, ``mean_var_norm``, ``embedding_model``,
        ``classifier`` as ``!new:`` :class:`~speechbrain_xmkd.run_folder.Tagged` nodes.
    checkpoint : speechbrain.utils.checkpoints.Checkpoint
        The exported checkpoint (named in the header).
    key : str
        The meta key it was chosen by.
    has_normalizer : bool
        Whether ``mean_var_norm.ckpt`` is exported (and so loaded).
    threshold : (str, float), optional
        Trial list name and EER threshold, written as ``verification_threshold``.

    Returns
    -------
    str
    """
    sample_rate = int(run.get("sample_rate", 16000))
    score = checkpoint.meta.get(key)
    lines = [
        "# " + "#" * 76,
        "# Speaker embeddings: the speech student of a cross-modal distillation run",
        "# (Zhao et al., 2025), exported by speechbrain_xmkd.hub. SpeechBrain alone loads it:",
        '#   SpeakerRecognition.from_hparams(source="<this folder or hub id>")',
        "# Every loadable is the file <name>.ckpt next to this yaml (no `paths`), so a",
        "# local copy never contacts the Hub.",
        f"# Checkpoint: {checkpoint.path.name} ({key} {score})",
        "# " + "#" * 76,
        "",
        f"sample_rate: {sample_rate}",
    ]
    if threshold is not None:
        lines.append(f"# EER threshold on {threshold[0]} (10-crop protocol); xmkd-verify's default")
        lines.append(f"verification_threshold: {threshold[1]:.6f}")
    lines += [
        "",
        "# Files are read and resampled to the training rate, as in training.",
        "audio_normalizer: !new:speechbrain.dataio.preprocess.AudioNormalizer",
        f"    sample_rate: {sample_rate}",
        "",
        dump_tagged_yaml({name: nodes[name] for name in ("compute_features", "mean_var_norm")}).rstrip(),
        "",
        "# The student (the teacher and the projection head are not part of the model).",
        dump_tagged_yaml({"embedding_model": nodes["embedding_model"]}).rstrip(),
        "",
        "# Speaker head over the training speakers (label_encoder).",
        dump_tagged_yaml({"classifier": nodes["classifier"]}).rstrip(),
        "",
        "# Global embedding mean over training utterances (encode_batch(normalize=True)).",
        "mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization",
        "    norm_type: global",
        "    std_norm: False",
        "",
        "label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder",
        "",
        "modules:",
    ]
    names = ["compute_features", "mean_var_norm", "embedding_model", "mean_var_norm_emb", "classifier"]
    lines += [f"    {name}: !ref <{name}>" for name in names]
    loadables = (["mean_var_norm"] if has_normalizer else []) + [
        "embedding_model",
        "mean_var_norm_emb",
        "classifier",
        "label_encoder",
    ]
    lines += ["", "pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer", "    loadables:"]
    lines += [f"        {name}: !ref <{name}>" for name in loadables]
    return "\n".join(lines) + "\n"


def fit_embedding_normalizer(embeddings):
    """SpeechBrain's global ``InputNormalization`` fit on ``[N, 1, D]`` embeddings.

    Example
    -------
    >>> norm = fit_embedding_normalizer(torch.tensor([[[1.0, 2.0]], [[3.0, 6.0]]]))
    >>> norm.glob_mean, norm.count
    (tensor([2., 4.]), 2)
    """
    from speechbrain.processing.features import InputNormalization

    norm = InputNormalization(norm_type="global", std_norm=False)
    norm.train()
    # One call over every embedding: the exact mean, not a running estimate.
    norm(embeddings, torch.ones(embeddings.shape[0]))
    norm.count = int(norm.count)
    return norm.eval()


@torch.no_grad()
def embed_rows(modules, rows, sample_rate=16000, device="cpu", progressbar=False):
    """Training-time embeddings (Fbank -> mean_var_norm -> student) of whole segments.

    Arguments
    ---------
    modules : dict
        ``compute_features``, ``mean_var_norm``, ``embedding_model``.
    rows : list of dict
        ``{"ID", "wav", "start", "stop"}`` (``wav`` already without ``$data_root``).

    Returns
    -------
    torch.Tensor
        ``[len(rows), 1, D]`` on the CPU.
    """
    features = modules["compute_features"].to(device).eval()
    normalizer = modules["mean_var_norm"].to(device).eval()
    student = modules["embedding_model"].to(device).eval()
    iterator = rows
    if progressbar:
        from tqdm import tqdm

        iterator = tqdm(rows, desc="embedding training utterances")
    out = []
    for row in iterator:
        where = f"{row['csv']} row {row['ID']}"
        wav = read_segment(row["wav"], int(row["start"]), int(row["stop"]), sample_rate, where)
        wav = wav.unsqueeze(0).to(device)
        lens = torch.ones(1, device=device)
        feats = normalizer(features(wav), lens)
        out.append(student(feats, lens).reshape(1, 1, -1).float().cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------------
# Image students
def export_image_run(output_folder, out_dir, ckpt_key=None, overwrite=False, image_size=None):
    """Writes the student of an image run (recipes/CIFAR100) as an image model folder.

    The trunk and its classifier become one
    :class:`~speechbrain_xmkd.image_export.StudentClassifier`; the test-time
    transform (``Resize`` + ``CenterCrop``, or none) and ``normalize`` become
    preprocessing.json; the class names are the run's label_encoder.txt in
    index order. Nothing of the text teacher or the projection head is kept.

    Arguments
    ---------
    output_folder : str
        The training run.
    out_dir : str
        Folder to create (see :mod:`speechbrain_xmkd.image_export`).
    ckpt_key : str, optional
        CKPT.yaml key to minimise (default the run's ``ckpt_key`` or ``ErrorRate``).
    overwrite : bool
        Replace ``out_dir`` if it holds a previous export.
    image_size : int, optional
        Input side when the test transform keeps images as they are (default:
        the training crop size).

    Returns
    -------
    pathlib.Path
    """
    from speechbrain.dataio.encoder import CategoricalEncoder

    run_dir = Path(output_folder)
    run = read_run(run_dir, IMAGE_KEYS)
    save_folder = _relocated(run["save_folder"], run.get("output_folder"), run_dir)
    key = ckpt_key or run.get("ckpt_key") or "ErrorRate"
    checkpoint = best_checkpoint(save_folder, key, required_files=list(CHECKPOINT_FILES))
    labels = save_folder / LABEL_ENCODER
    if not labels.is_file():
        raise FileNotFoundError(f"'{run_dir}' has no {save_folder.name}/{LABEL_ENCODER} (the recipe writes it)")
    encoder = CategoricalEncoder()
    encoder.load(labels)
    class_names = [encoder.ind2lab[i] for i in range(len(encoder))]

    keys = list(IMAGE_KEYS[:4]) + (["train_transform"] if "train_transform" in run else [])
    nodes = _exported_nodes(run, run_dir, keys)
    specs = {}
    for name in ("embedding_model", "classifier"):
        node = nodes[name]
        if not is_plain(node.value or {}):
            raise ValueError(f"'{name}' has object arguments; an image model folder stores JSON arguments only")
        specs[name] = {"architecture": node.target, "kwargs": dict(node.value or {})}
    model = StudentClassifier(specs["embedding_model"], specs["classifier"])
    _load_module(model.embedding_model, checkpoint.path / "embedding_model.ckpt", "embedding_model")
    _load_module(model.classifier, checkpoint.path / "classifier.ckpt", "classifier")
    preprocessing = image_preprocessing(nodes, image_size)
    description = image_run_description(run, run_dir, checkpoint, key)
    return export_image_model(
        model,
        out_dir,
        class_names,
        "speechbrain_xmkd.image_export.StudentClassifier",
        preprocessing,
        architecture_kwargs={"embedding": specs["embedding_model"], "classifier": specs["classifier"]},
        description=description,
        overwrite=overwrite,
    )


def image_preprocessing(nodes, image_size=None):
    """preprocessing.json values from an image run's transforms.

    Arguments
    ---------
    nodes : dict
        ``normalize`` (torchvision ``Normalize``), ``test_transform``
        (``Identity``, or a ``Compose`` of ``Resize`` and ``CenterCrop``)
        and optionally ``train_transform`` (its random crop size is the
        input side when the test transform is ``Identity``).
    image_size : int, optional
        The input side, overriding the training crop size.

    Returns
    -------
    dict
        ``resize``, ``crop``, ``mean``, ``std``.

    Example
    -------
    >>> from speechbrain_xmkd.run_folder import Tagged
    >>> nodes = {
    ...     "normalize": Tagged("!new:torchvision.transforms.v2.Normalize", {"mean": [0.5] * 3, "std": [0.2] * 3}),
    ...     "test_transform": Tagged("!new:torchvision.transforms.v2.Compose", {"transforms": [
    ...         Tagged("!new:torchvision.transforms.v2.Resize", {"size": 256}),
    ...         Tagged("!new:torchvision.transforms.v2.CenterCrop", {"size": 224})]}),
    ... }
    >>> image_preprocessing(nodes)
    {'resize': 256, 'crop': 224, 'mean': [0.5, 0.5, 0.5], 'std': [0.2, 0.2, 0.2]}
    """
    normalize = nodes["normalize"].value or {}
    if "mean" not in normalize or "std" not in normalize:
        raise ValueError(f"normalize ({nodes['normalize'].tag}) has no mean and std")
    steps = _transform_steps(nodes["test_transform"])
    sizes = {}
    for step in steps:
        name = step.target.rsplit(".", 1)[-1]
        if name in ("Resize", "CenterCrop"):
            sizes[name] = _single_size(step.value.get("size"), name)
        elif name != "Identity":
            raise ValueError(
                f"test_transform has {step.target}; exported preprocessing supports Resize and CenterCrop"
            )
    if not sizes:  # images used as they are: the training crop gives the input size
        if image_size is None:
            crops = [
                s for s in _transform_steps(nodes.get("train_transform"))
                if s.target.rsplit(".", 1)[-1] in ("RandomCrop", "RandomResizedCrop", "CenterCrop")
            ]
            if not crops:
                raise ValueError("the test transform keeps images as they are: pass image_size= (--image-size)")
            image_size = _single_size(crops[0].value.get("size"), crops[0].target)
        sizes = {"Resize": int(image_size), "CenterCrop": int(image_size)}
    resize = sizes.get("Resize", sizes.get("CenterCrop"))
    if "Resize" not in sizes:
        raise ValueError("test_transform crops without resizing; exported preprocessing needs a Resize first")
    return {"resize": resize, "crop": sizes.get("CenterCrop", resize),
            "mean": list(normalize["mean"]), "std": list(normalize["std"])}


def _transform_steps(node):
    if node is None:
        return []
    if node.target.endswith("Compose"):
        value = node.value or {}
        steps = value.get("transforms", []) if isinstance(value, dict) else value[0]
        return [concrete_node(step, "transform") for step in steps]
    return [node]


def _single_size(size, where):
    if isinstance(size, list) and len(size) == 1:
        size = size[0]
    if not isinstance(size, int):
        raise ValueError(f"{where} size {size!r}: exported preprocessing needs one integer (shorter side)")
    return size


# ----------------------------------------------------------------------------
# Any run
def export_run(output_folder, out_dir, ckpt_key=None, overwrite=False, **options):
    """Exports a run's student, whatever its modality.

    A run whose hyperparams.yaml has ``classes_file`` (:data:`IMAGE_RUN_KEY`,
    the image recipe's class list) goes to :func:`export_image_run` (which
    takes ``image_size`` from ``options``); any other run to
    :func:`export_speaker_model` (the rest of ``options``).
    """
    run = read_run(output_folder)
    image_size = options.pop("image_size", None)
    if IMAGE_RUN_KEY in run:
        ignored = sorted(name for name, value in options.items() if value is not None)
        if ignored:
            logger.warning("'%s' is an image run: %s do not apply", output_folder, ", ".join(ignored))
        return export_image_run(output_folder, out_dir, ckpt_key, overwrite, image_size)
    if image_size is not None:
        logger.warning("'%s' is a speaker run: image_size does not apply", output_folder)
    return export_speaker_model(output_folder, out_dir, ckpt_key, overwrite, **options)


def require_hub_token():
    """The Hugging Face token from the usual places, or an error saying how to log in.

    Raises
    ------
    PermissionError
        No token (``HF_TOKEN`` unset and not logged in), or offline mode is on.
    """
    import huggingface_hub
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise PermissionError("HF_HUB_OFFLINE is set: unset it to push to the Hugging Face Hub")
    token = huggingface_hub.get_token()
    if not token:
        raise PermissionError(LOGIN_HELP)
    return token


def push_to_hub(folder, repo_id, private=False, token=None, api=None, commit_message=None):
    """Uploads an exported model folder to ``repo_id`` (created if needed).

    Arguments
    ---------
    folder : str
        An exported model folder.
    repo_id : str
        ``user/name`` or ``org/name``.
    private : bool
        Create the repository private (an existing one keeps its visibility).
    token : str, optional
        Default :func:`require_hub_token`.
    api : huggingface_hub.HfApi, optional
        For tests or custom endpoints.

    Returns
    -------
    str
        The repository URL.

    Example
    -------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "hyperparams.yaml").write_text("modules: {}\\n")
    >>> class DryRun:  # stands in for huggingface_hub.HfApi
    ...     def create_repo(self, repo_id, **kwargs):
    ...         return f"https://huggingface.co/{repo_id}"
    ...     def upload_folder(self, repo_id, folder_path, **kwargs):
    ...         print("upload", Path(folder_path).name == folder.name, "to", repo_id)
    >>> push_to_hub(folder, "someone/student", api=DryRun())
    upload True to someone/student
    'https://huggingface.co/someone/student'
    """
    folder = Path(folder)
    if not (folder / HYPERPARAMS).is_file() and not (folder / "preprocessing.json").is_file():
        raise FileNotFoundError(f"'{folder}' is not an exported model folder (no {HYPERPARAMS})")
    if "/" not in repo_id:
        raise ValueError(f"repository id '{repo_id}' must be 'user/name' or 'org/name'")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token or require_hub_token())
    url = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        repo_type="model",
        folder_path=str(folder),
        commit_message=commit_message or "Upload speechbrain_xmkd student",
    )
    return str(url)


# ----------------------------------------------------------------------------
# Helpers
def _check_out_dir(out_dir, overwrite):
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"'{out_dir}' exists and is not a folder")
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"'{out_dir}' exists and is not empty: pass overwrite=True (--overwrite) to replace it")
    if not (out_dir / HYPERPARAMS).is_file():
        raise FileExistsError(f"'{out_dir}' is not an exported model (no {HYPERPARAMS}): not replacing it")


def _exported_nodes(run, run_dir, keys):
    """The run's ``!new:`` nodes for ``keys``: choices resolved, computed arguments evaluated."""
    search_path = [p for p in (recipe_folder(run_dir),) if p is not None]
    return {key: evaluate_arguments(concrete_node(run[key], key), key, search_path) for key in keys}


def _relocated(path, old_root, new_root):
    """``path`` under ``new_root`` if it was under ``old_root`` (a moved run)."""
    path = Path(path)
    if old_root is not None:
        try:
            return Path(new_root) / path.relative_to(Path(old_root))
        except ValueError:
            pass
    return path


def _build(yaml_text):
    from hyperpyyaml import load_hyperpyyaml

    return load_hyperpyyaml(yaml_text)


def _load_weights(path, what):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types; name the file
        raise ValueError(f"{what} checkpoint '{path}' cannot be loaded as weights: {err}") from None


def _load_module(module, path, what):
    state = _load_weights(path, what)
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"'{path}' does not fit the {what} built from the run's {HYPERPARAMS}: {err}") from None


def _load_normalizer(normalizer, path):
    stats = _load_weights(path, "mean_var_norm")
    if hasattr(normalizer, "_load_statistics_dict"):  # SpeechBrain's InputNormalization
        normalizer._load_statistics_dict(stats)
    else:
        normalizer.load_state_dict(stats)


def _training_rows(run, run_dir, data_folder, train_annotation):
    csv_path = Path(train_annotation or run.get("train_annotation") or "")
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"the run's training list '{csv_path}' does not exist; the embedding normaliser is "
            "fit on training utterances: pass train_annotation= (--train_csv) and data_folder= "
            "(--data_folder) where the data is now"
        )
    root = str(data_folder or run.get("data_folder") or "")
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"ID", "wav", "start", "stop"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))}")
        rows = [
            {"ID": r["ID"], "wav": r["wav"].replace("$data_root", root), "start": r["start"],
             "stop": r["stop"], "csv": csv_path.name}
            for r in reader
        ]
    if not rows:
        raise ValueError(f"{csv_path} lists no utterance")
    return rows


def _sample(rows, count, seed=0):
    if count <= 0:
        raise ValueError("norm_utterances must be positive: mean_var_norm_emb is fit on them")
    if len(rows) <= count:
        return rows
    picked = sorted(random.Random(seed).sample(range(len(rows)), count))
    return [rows[i] for i in picked]


def _check_classes(modules, embeddings, labels_path):
    from speechbrain.dataio.encoder import CategoricalEncoder

    encoder = CategoricalEncoder()
    encoder.load(labels_path)
    with torch.no_grad():
        classes = modules["classifier"].eval()(embeddings[:1]).shape[-1]
    if classes != len(encoder):
        raise ValueError(
            f"the classifier has {classes} outputs but {labels_path} lists {len(encoder)} labels"
        )


def _eer_threshold(run_dir):
    results = read_results(run_dir)
    for name, conditions in results.items():
        clean = conditions.get("clean") if isinstance(conditions, dict) else None
        if isinstance(clean, dict) and "eer_threshold" in clean:
            return name, float(clean["eer_threshold"])
    return None
