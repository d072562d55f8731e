#!/usr/bin/env python3
"""Trains the weak face teacher: a small ResNet face encoder from scratch.

The paper's "weak teacher" (Table 2) is a ResNet face model trained on the
same people the speaker student hears. This recipe trains
:class:`~speechbrain_xmkd.teachers.face.SmallFaceResNet` to recognise the
identities of the aligned faces listed in the speaker recipe's csv files
(``ID,duration,wav,start,stop,spk_id,face``): every unique ``face`` is one
image labelled by its ``spk_id``, seen once per epoch; rows with an empty
``face`` are ignored. Validation uses faces the encoder never trains on:
``valid_faces_per_speaker`` faces of every training identity held out of
the training csv, plus the faces of ``valid_annotation`` that are not in
the training csv.

At the end it writes, in ``output_folder``:

* ``face_teacher.ckpt``: the encoder's state_dict (no classifier head), a
  plain tensor file that ``SmallFaceResNet(..., weights=path)`` loads with
  ``weights_only=True``;
* ``face_teacher.json``: the encoder's class and constructor arguments,
  and the validation accuracy and error of the exported (best) epoch.

If both exist the run is skipped, so another recipe can call
:func:`train_face_teacher` in-process as "train the face teacher first if
its checkpoint is missing". An interrupted run resumes from ``save/``.

Usage::

    python recipes/VoxCeleb/train_face_teacher.py recipes/VoxCeleb/hparams/face_teacher.yaml \\
        --train_annotation S/train.csv --valid_annotation S/dev.csv \\
        --data_folder D --output_folder O

Authors
 * speechbrain-xmkd contributors
"""

import importlib
import inspect
import json
import logging
import os
import random
import sys
from collections import defaultdict

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml, resolve_references
from speechbrain.dataio.dataio import load_data_csv
from speechbrain.utils.distributed import if_main_process, run_on_main

from speechbrain_xmkd.teachers.augment import FaceAugment
from speechbrain_xmkd.teachers.cache import load_face_image

logger = logging.getLogger(__name__)

CKPT_FILE = "face_teacher.ckpt"
INFO_FILE = "face_teacher.json"


class FaceTeacherBrain(sb.core.Brain):
    """Trains ``modules.encoder`` + ``modules.classifier`` on face identities."""

    def compute_forward(self, batch, stage):
        """Augments (training only), embeds and classifies a batch of faces."""
        batch = batch.to(self.device)
        images = batch.image.data.permute(0, 3, 1, 2).float()
        augment = getattr(self.hparams, "augment", None)
        if stage == sb.Stage.TRAIN and augment is not None:
            images = augment(images)
        encoder = self.modules.encoder
        embeddings = encoder(encoder.preprocess(images))
        return self.modules.classifier(embeddings.unsqueeze(1))

    def compute_objectives(self, predictions, batch, stage):
        """Classification loss (``compute_cost``); tracks the error outside training."""
        labels, _ = batch.spk_id_encoded
        loss = self.hparams.compute_cost(predictions, labels)
        if stage != sb.Stage.TRAIN:
            self.error_metrics.append(batch.id, predictions, labels)
        return loss

    def on_stage_start(self, stage, epoch=None):
        """Starts a fresh error tracker for validation and test."""
        if stage != sb.Stage.TRAIN:
            self.error_metrics = self.hparams.error_stats()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs the epoch, anneals the learning rate and saves a checkpoint."""
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss}
            if self.has_valid:
                return
            valid_stats, meta, min_keys = None, {"epoch": epoch}, []
        elif stage == sb.Stage.VALID:
            error = self.error_metrics.summarize("average")
            valid_stats = {"loss": stage_loss, "error": error}
            meta = {"error": error, "accuracy": 1.0 - error, "epoch": epoch}
            min_keys = ["error"]
        else:
            return
        old_lr, new_lr = self.hparams.lr_annealing(epoch)
        sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
        self.hparams.train_logger.log_stats(
            stats_meta={"epoch": epoch, "lr": old_lr},
            train_stats=self.train_stats,
            valid_stats=valid_stats,
        )
        self.checkpointer.save_and_keep_only(meta=meta, min_keys=min_keys)


def _row_source(csv_path, row, data_id):
    return f"{csv_path} row {row} (ID '{data_id}')"


def read_face_csv(csv_path, data_folder=None):
    """Reads the unique faces of a speaker csv, with where each was listed.

    Arguments
    ---------
    csv_path : str
        Csv with at least the columns ``ID``, ``spk_id`` and ``face``.
    data_folder : str, optional
        Replaces ``$data_root`` in the paths.

    Returns
    -------
    dict
        ``{face_path: {"spk_id": str, "source": "<csv> row N (ID '...')"}}``
        in csv order; N counts data rows from 1 (the header is row 0).

    Raises
    ------
    ValueError
        Missing columns, ``$data_root`` without ``data_folder``, or one face
        listed under two identities.

    Example
    -------
    >>> import os, tempfile
    >>> f = os.path.join(tempfile.mkdtemp(), "train.csv")
    >>> rows = ["ID,spk_id,face", "u1,a,$data_root/x.png", "u2,a,$data_root/x.png", "u3,b,"]
    >>> with open(f, "w") as out:
    ...     _ = out.write("\\n".join(rows) + "\\n")
    >>> faces = read_face_csv(f, data_folder="/d")
    >>> list(faces), faces["/d/x.png"]["spk_id"]
    (['/d/x.png'], 'a')
    """
    csv_path = os.fspath(csv_path)
    with open(csv_path, encoding="utf-8") as fin:
        header = fin.readline()
        uses_root = "$data_root" in fin.read()
    columns = {c.strip() for c in header.strip().split(",")}
    missing = {"ID", "spk_id", "face"} - columns
    if missing:
        raise ValueError(
            f"{csv_path}: missing column(s) {sorted(missing)}; expected the speaker "
            "recipe's header ID,duration,wav,start,stop,spk_id,face"
        )
    if uses_root and data_folder is None:
        raise ValueError(
            f"{csv_path} has paths starting with $data_root; pass --data_folder "
            "(the folder they are relative to)"
        )
    replacements = {} if data_folder is None else {"data_root": str(data_folder)}
    faces = {}
    for row, (data_id, entry) in enumerate(load_data_csv(csv_path, replacements).items(), 1):
        path = entry["face"].strip()
        if not path:
            continue
        spk_id = entry["spk_id"]
        known = faces.get(path)
        if known is None:
            faces[path] = {"spk_id": spk_id, "source": _row_source(csv_path, row, data_id)}
        elif known["spk_id"] != spk_id:
            raise ValueError(
                f"face image '{path}' is listed under two identities: "
                f"'{known['spk_id']}' in {known['source']} and '{spk_id}' in "
                f"{_row_source(csv_path, row, data_id)}"
            )
    return faces


def _check_files_exist(faces):
    # Up front and cheap (no decoding): fail before the first epoch.
    for path, entry in faces.items():
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"face image '{path}' listed in {entry['source']} does not exist"
            )


def split_faces(train_faces, valid_faces, valid_faces_per_speaker, seed):
    """Splits faces into training and (unseen) validation faces.

    Arguments
    ---------
    train_faces : dict
        From :func:`read_face_csv` on the training csv.
    valid_faces : dict
        From :func:`read_face_csv` on the validation csv (may be empty).
    valid_faces_per_speaker : int
        Faces of each training identity moved to validation (identities with
        no more faces than this keep all of theirs for training).
    seed : int
        Seed of the held-out choice (the same on every resume).

    Returns
    -------
    tuple of dict
        ``(train, valid, skipped)``: training faces, validation faces, and
        counts of validation-csv faces left out (already trained on, or of an
        identity absent from training).

    Example
    -------
    >>> train = {f"{s}{i}.png": {"spk_id": s, "source": ""} for s in "ab" for i in range(3)}
    >>> tr, va, skipped = split_faces(train, {}, 1, seed=0)
    >>> len(tr), sorted(e["spk_id"] for e in va.values())
    (4, ['a', 'b'])
    """
    by_speaker = defaultdict(list)
    for path, entry in train_faces.items():
        by_speaker[entry["spk_id"]].append(path)
    rng = random.Random(seed)
    held_out = set()
    for spk_id in sorted(by_speaker):
        paths = sorted(by_speaker[spk_id])
        if len(paths) > valid_faces_per_speaker > 0:
            held_out.update(rng.sample(paths, valid_faces_per_speaker))
    train = {p: e for p, e in train_faces.items() if p not in held_out}
    valid = {p: train_faces[p] for p in train_faces if p in held_out}
    skipped = {"trained_on": 0, "unknown_identity": 0}
    for path, entry in valid_faces.items():
        if path in train:
            skipped["trained_on"] += 1
        elif entry["spk_id"] not in by_speaker:
            skipped["unknown_identity"] += 1
        elif path not in valid:
            valid[path] = entry
    return train, valid, skipped


def dataio_prep(hparams):
    """Builds the face datasets and the identity encoder.

    Arguments
    ---------
    hparams : dict
        Loaded hyperparameters (see ``hparams/face_teacher.yaml``).

    Returns
    -------
    tuple
        ``(train_data, valid_data or None, label_encoder)``.
    """
    data_folder = hparams.get("data_folder")
    train_faces = read_face_csv(hparams["train_annotation"], data_folder)
    valid_csv = hparams.get("valid_annotation")
    valid_faces = read_face_csv(valid_csv, data_folder) if valid_csv else {}
    train_faces, valid_faces, skipped = split_faces(
        train_faces, valid_faces, int(hparams["valid_faces_per_speaker"]), hparams["seed"]
    )
    if not train_faces:
        raise ValueError(f"no face images listed in {hparams['train_annotation']}")
    _check_files_exist(train_faces)
    _check_files_exist(valid_faces)

    image_size = hparams["image_size"]

    @sb.utils.data_pipeline.takes("face", "source")
    @sb.utils.data_pipeline.provides("image")
    def image_pipeline(face, source):
        try:
            image = load_face_image(face, size=image_size)
        except (OSError, ValueError) as err:
            raise ValueError(f"{err}; listed in {source}") from err
        return torch.from_numpy(image)

    label_encoder = sb.dataio.encoder.CategoricalEncoder()

    @sb.utils.data_pipeline.takes("spk_id")
    @sb.utils.data_pipeline.provides("spk_id_encoded")
    def label_pipeline(spk_id):
        return torch.LongTensor([label_encoder.encode_label(spk_id)])

    def dataset(faces):
        data = {
            path: {"face": path, "spk_id": e["spk_id"], "source": e["source"]}
            for path, e in faces.items()
        }
        return sb.dataio.dataset.DynamicItemDataset(
            data,
            dynamic_items=[image_pipeline, label_pipeline],
            output_keys=["id", "image", "spk_id_encoded"],
        )

    train_data = dataset(train_faces)
    valid_data = dataset(valid_faces) if valid_faces else None
    label_encoder.load_or_create(
        path=os.path.join(hparams["save_folder"], "label_encoder.txt"),
        from_didatasets=[train_data],
        output_key="spk_id",
    )
    label_encoder.expect_len(len({e["spk_id"] for e in train_faces.values()}))
    logger.info(
        "Face teacher data: %d identities, %d training faces, %d validation "
        "faces; validation csv faces left out: %d already in training, %d of "
        "unknown identities",
        len(label_encoder),
        len(train_faces),
        len(valid_faces),
        skipped["trained_on"],
        skipped["unknown_identity"],
    )
    return train_data, valid_data, label_encoder


def find_face_teacher(output_folder):
    """Returns the exported teacher's checkpoint path, or None if not there.

    Arguments
    ---------
    output_folder : str
        ``output_folder`` of a face-teacher run.

    Returns
    -------
    str or None
        ``<output_folder>/face_teacher.ckpt`` when it and its json exist.

    Example
    -------
    >>> import tempfile
    >>> find_face_teacher(tempfile.mkdtemp()) is None
    True
    """
    ckpt = os.path.join(output_folder, CKPT_FILE)
    info = os.path.join(output_folder, INFO_FILE)
    return ckpt if os.path.isfile(ckpt) and os.path.isfile(info) else None


def load_face_teacher(output_folder):
    """Builds the exported encoder from ``face_teacher.json`` and its weights.

    Arguments
    ---------
    output_folder : str
        ``output_folder`` of a finished face-teacher run.

    Returns
    -------
    torch.nn.Module
        The encoder (e.g. ``SmallFaceResNet``) in eval mode.
    """
    ckpt = find_face_teacher(output_folder)
    if ckpt is None:
        raise FileNotFoundError(
            f"no {CKPT_FILE} + {INFO_FILE} in '{output_folder}'; run train_face_teacher.py"
        )
    with open(os.path.join(output_folder, INFO_FILE), encoding="utf-8") as fin:
        info = json.load(fin)
    module_name, _, class_name = info["class"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**info["kwargs"], weights=ckpt).eval()


def _constructor_args(encoder):
    """The encoder's constructor arguments, read back from its attributes."""
    args = {}
    for name, param in inspect.signature(type(encoder).__init__).parameters.items():
        if name in ("self", "weights", "num_classes") or param.kind in (
            param.VAR_POSITIONAL,
            param.VAR_KEYWORD,
        ):
            continue
        if hasattr(encoder, name):
            value = getattr(encoder, name)
            args[name] = list(value) if isinstance(value, tuple) else value
        elif param.default is param.empty:
            raise ValueError(
                f"cannot export {type(encoder).__name__}: constructor argument "
                f"'{name}' is not stored as an attribute"
            )
    return args


def _atomic_write(path, write):
    tmp = f"{path}.tmp"
    write(tmp)
    os.replace(tmp, path)


def export_face_teacher(brain, hparams, label_encoder, num_train, num_valid):
    """Writes ``face_teacher.ckpt`` (best epoch) and ``face_teacher.json``."""
    output_folder = hparams["output_folder"]
    checkpoint = None
    if brain.has_valid:
        checkpoint = brain.checkpointer.recover_if_possible(min_key="error")
    else:
        checkpoint = brain.checkpointer.recover_if_possible()
    encoder = hparams["encoder"]
    meta = checkpoint.meta if checkpoint is not None else {}
    state = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    info = {
        "class": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
        "kwargs": _constructor_args(encoder),
        "identity": encoder.identity(),
        "valid_accuracy": meta.get("accuracy"),
        "valid_error": meta.get("error"),
        "epoch": meta.get("epoch"),
        "number_of_epochs": hparams["number_of_epochs"],
        "num_identities": len(label_encoder),
        "num_train_faces": num_train,
        "num_valid_faces": num_valid,
        "train_annotation": os.path.abspath(hparams["train_annotation"]),
        "valid_annotation": hparams.get("valid_annotation"),
    }
    # The json first and the weights last: the pair counts as done only
    # once the weights file is in place (see find_face_teacher).
    _atomic_write(
        os.path.join(output_folder, INFO_FILE),
        lambda tmp: _write_json(info, tmp),
    )
    ckpt = os.path.join(output_folder, CKPT_FILE)
    _atomic_write(ckpt, lambda tmp: torch.save(state, tmp))
    logger.info(
        "Face teacher exported to %s (epoch %s, validation accuracy %s)",
        ckpt,
        info["epoch"],
        info["valid_accuracy"],
    )
    return ckpt


def _write_json(obj, path):
    with open(path, "w", encoding="utf-8") as fout:
        json.dump(obj, fout, indent=2)


def _save_hyperparams(hparams_file, overrides, output_folder):
    # What create_experiment_directory saves, without touching the caller's
    # logging setup (this may run inside another recipe).
    with open(hparams_file, encoding="utf-8") as fin:
        resolved = resolve_references(fin, overrides or {})
    with open(os.path.join(output_folder, "hyperparams.yaml"), "w", encoding="utf-8") as fout:
        fout.write(resolved.getvalue())


DEFAULT_HPARAMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hparams", "face_teacher.yaml")


def train_face_teacher(hparams_file=None, overrides=None, run_opts=None, force=False):
    """Trains the face teacher unless its exported checkpoint already exists.

    Arguments
    ---------
    hparams_file : str, optional
        e.g. ``recipes/VoxCeleb/hparams/face_teacher.yaml`` (the default).
    overrides : dict or str, optional
        Hyperparameter overrides (a dict, or yaml text as from
        ``sb.parse_arguments``); at least ``train_annotation``.
    run_opts : dict, optional
        ``Brain`` run options (``{"device": "cuda:0"}``, ...).
    force : bool
        Train (or resume) even when ``face_teacher.ckpt`` exists.

    Returns
    -------
    str
        Path of ``face_teacher.ckpt``.
    """
    hparams_file = hparams_file or DEFAULT_HPARAMS
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides or {})
    output_folder = hparams["output_folder"]
    existing = find_face_teacher(output_folder)
    if existing is not None and not force:
        logger.info("Face teacher %s exists; skipping its training", existing)
        return existing

    if if_main_process():
        os.makedirs(hparams["save_folder"], exist_ok=True)
        _save_hyperparams(hparams_file, overrides, output_folder)
    sb.utils.distributed.ddp_barrier()

    train_data, valid_data, label_encoder = dataio_prep(hparams)
    augment = hparams.get("augment")
    if isinstance(augment, dict):
        hparams["augment"] = FaceAugment(**augment)

    classifier = hparams["classifier"](out_neurons=len(label_encoder))
    checkpointer = hparams["checkpointer"]
    checkpointer.add_recoverable("classifier", classifier)
    brain = FaceTeacherBrain(
        modules={"encoder": hparams["encoder"], "classifier": classifier},
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=checkpointer,
    )
    brain.has_valid = valid_data is not None

    train_opts = dict(hparams["train_dataloader_opts"])
    # BatchNorm cannot normalise a training batch of one face.
    if len(train_data) % train_opts.get("batch_size", 1) == 1:
        train_opts["drop_last"] = True
    brain.fit(
        brain.hparams.epoch_counter,
        train_data,
        valid_data,
        train_loader_kwargs=train_opts,
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    num_valid = 0 if valid_data is None else len(valid_data)
    run_on_main(
        export_face_teacher,
        args=[brain, hparams, label_encoder, len(train_data), num_valid],
    )
    return os.path.join(output_folder, CKPT_FILE)


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    with open(hparams_file, encoding="utf-8") as fin:
        output_folder = load_hyperpyyaml(fin, overrides)["output_folder"]
    sb.create_experiment_directory(
        experiment_directory=output_folder,
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    train_face_teacher(hparams_file, overrides, run_opts)
