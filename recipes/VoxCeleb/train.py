#!/usr/bin/env python3
"""Speaker embeddings that learn from faces: cross-modal distillation recipe.

A speech-only student (ResNet34, ECAPA-TDNN, x-vector, ...) trains on
VoxCeleb2 (or on the embedded audio-visual corpus) while a frozen face
model, through a trainable projection head, teaches it (Zhao et al., 2025).
At test time only speech is used.

    python recipes/VoxCeleb/train.py recipes/VoxCeleb/hparams/resnet34_xmkd.yaml \
        --data_folder /data/voxceleb2 --teacher_weights ir50.pth --output_folder results/x
    python recipes/VoxCeleb/train.py recipes/VoxCeleb/hparams/synthetic_xmkd.yaml

Multi-GPU: ``torchrun --nproc_per_node=4 recipes/VoxCeleb/train.py <yaml>``.
Mixed precision: ``--precision bf16``. Resume: run the same command again.
Pick the method of a paper table row with ``--method`` (see the yaml).
"""

import json
import logging
import os
import sys
from pathlib import Path

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import run_on_main

# Recipe-local modules (data preparation, face-teacher training) are named in
# the yaml as `!name:module.function`.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speechbrain_xmkd.audio import random_crop, read_segment, tile  # noqa: E402
from speechbrain_xmkd.brain import XMKDBrain  # noqa: E402
from speechbrain_xmkd.config import select  # noqa: E402
from speechbrain_xmkd.subsets import fraction_per_class  # noqa: E402
from speechbrain_xmkd.teachers import FrozenTeacher, build_or_load_cache, load_face_image  # noqa: E402
from speechbrain_xmkd.verification import evaluate_trials  # noqa: E402

logger = logging.getLogger(__name__)


class SpeakerBrain(XMKDBrain):
    """Speech student: waveform -> features -> embedding; the rest is XMKDBrain."""

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, lens = batch.sig
        augment = getattr(self.hparams, "student_augment", None)
        if stage == sb.Stage.TRAIN and augment is not None:
            wavs, lens = augment(wavs, lens)
        feats = self.modules.compute_features(wavs)
        feats = self.modules.mean_var_norm(feats, lens)
        return self.modules.embedding_model(feats, lens)


def build_teacher_cache(hparams, run_opts, csv_files):
    """Embeds every face listed in the CSVs once; returns path -> row lookup.

    Runs the frozen teacher on the main process only (other DDP ranks wait
    and then load the finished cache).
    """
    faces = set()
    for csv_file in csv_files:
        for row in _read_csv_rows(csv_file):
            if row["face"]:
                # The same replacement DynamicItemDataset.from_csv applies.
                faces.add(row["face"].replace("$data_root", hparams["data_folder"]))
    if not faces:
        raise ValueError(
            f"no face is listed in {', '.join(map(str, csv_files))}: the distiller has no teacher "
            "input (use --method=baseline to train the plain student)"
        )
    items = [(face, face) for face in sorted(faces)]
    setup = hparams.get("prepare_teacher")
    if setup is not None:  # e.g. train the small face teacher when it is missing
        run_on_main(setup, kwargs={"run_opts": {"device": run_opts.get("device") or "cpu"}})
    # Built only now: a teacher trained by `prepare_teacher` has no weights
    # file before this point.
    teacher = FrozenTeacher(select(hparams["teachers"], hparams["teacher_kind"], "teacher_kind"))
    kwargs = dict(
        teacher=teacher,
        items=items,
        cache_dir=hparams["teacher_cache_folder"],
        batch_size=hparams.get("teacher_batch_size", 64),
        extra_key=hparams.get("teacher_cache_extra", None),
        device=run_opts.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"),
    )
    run_on_main(build_or_load_cache, kwargs=kwargs)
    # Every process now only reads the finished files.
    return build_or_load_cache(**{**kwargs, "progressbar": False})


def _read_csv_rows(path):
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"ID", "wav", "start", "stop", "spk_id", "face"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {', '.join(sorted(missing))}; expected the header "
                "ID,duration,wav,start,stop,spk_id,face"
            )
        yield from reader


def dataio_prep(hparams, teacher_cache):
    """Train/valid datasets: audio crops, encoded speaker ids, cached E_T."""
    data_folder = hparams["data_folder"]
    sample_rate = hparams["sample_rate"]
    crop = int(hparams["sentence_len"] * sample_rate)
    datasets = {}
    for split, annotation in (("train", "train_annotation"), ("valid", "valid_annotation")):
        path = hparams[annotation]
        list(_read_csv_rows(path))  # validates the header before a long run
        datasets[split] = sb.dataio.dataset.DynamicItemDataset.from_csv(
            csv_path=path, replacements={"data_root": data_folder}
        )

    @sb.utils.data_pipeline.takes("id", "wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def train_audio(utt_id, wav, start, stop):
        # A random crop anywhere inside the listed segment (paper: 2 s).
        return random_crop(wav, int(start), int(stop), crop, sample_rate=sample_rate, where=f"row {utt_id}")

    @sb.utils.data_pipeline.takes("id", "wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def valid_audio(utt_id, wav, start, stop):
        # Deterministic: the first crop of the segment, tiled if short.
        start = int(start)
        signal = read_segment(wav, start, min(int(stop), start + crop), sample_rate, where=f"row {utt_id}")
        return tile(signal, crop)

    label_encoder = sb.dataio.encoder.CategoricalEncoder()

    @sb.utils.data_pipeline.takes("spk_id")
    @sb.utils.data_pipeline.provides("spk_id", "spk_id_encoded")
    def label_pipeline(spk_id):
        yield spk_id
        yield label_encoder.encode_sequence_torch([spk_id])

    if teacher_cache is None and hparams.get("teacher_augment") is not None:
        # Face augmentation: the teacher runs every step on decoded faces.
        size = hparams["teacher"].input_size or 112

        @sb.utils.data_pipeline.takes("id", "face")
        @sb.utils.data_pipeline.provides("teacher_input", "has_teacher")
        def face_pipeline(utt_id, face):
            if face:
                yield torch.from_numpy(load_face_image(face, size=size))
                yield torch.tensor([True])
            else:
                yield torch.zeros(size, size, 3, dtype=torch.uint8)
                yield torch.tensor([False])

    if teacher_cache is not None:

        @sb.utils.data_pipeline.takes("face")
        @sb.utils.data_pipeline.provides("teacher_emb", "has_teacher")
        def teacher_pipeline(face):
            if face:
                yield teacher_cache[face]
                yield torch.tensor([True])
            else:  # no usable face for this video: trains without distillation
                yield torch.zeros(teacher_cache.embedding_dim)
                yield torch.tensor([False])

    keys = ["id", "sig", "spk_id_encoded"]
    teacher_item = None
    if teacher_cache is not None:
        teacher_item, keys = teacher_pipeline, keys + ["teacher_emb", "has_teacher"]
    elif hparams.get("teacher_augment") is not None and hparams["distiller"].distills:
        teacher_item, keys = face_pipeline, keys + ["teacher_input", "has_teacher"]
    for split, dataset in datasets.items():
        sb.dataio.dataset.add_dynamic_item([dataset], train_audio if split == "train" else valid_audio)
        sb.dataio.dataset.add_dynamic_item([dataset], label_pipeline)
        if teacher_item is not None:
            sb.dataio.dataset.add_dynamic_item([dataset], teacher_item)
    sb.dataio.dataset.set_output_keys(list(datasets.values()), keys)

    label_encoder.load_or_create(
        path=os.path.join(hparams["save_folder"], "label_encoder.txt"),
        from_didatasets=[datasets["train"]],
        output_key="spk_id",
    )
    num_speakers = len(label_encoder)
    if num_speakers != hparams["out_n_neurons"]:
        raise ValueError(
            f"out_n_neurons is {hparams['out_n_neurons']} but {hparams['train_annotation']} has "
            f"{num_speakers} speakers: pass --out_n_neurons={num_speakers}"
        )
    label_encoder.expect_len(num_speakers)
    return datasets["train"], datasets["valid"], label_encoder


def main(argv):
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )

    run_on_main(hparams["prepare_data"])
    fraction = hparams.get("data_fraction", 1.0)
    if fraction < 1:
        # Table 2: a seeded share of each speaker's videos, every speaker kept.
        subset = os.path.join(hparams["save_folder"], f"train_fraction{fraction:g}.csv")
        run_on_main(
            fraction_per_class,
            args=[hparams["train_annotation"], subset, fraction, hparams.get("fraction_seed", 1234)],
        )
        hparams["train_annotation"] = subset
    distiller = hparams["distiller"]
    teacher_cache = None
    if distiller.distills and hparams.get("teacher_augment") is not None:
        # Augmented faces change every step: no cache, the teacher runs online.
        setup = hparams.get("prepare_teacher")
        if setup is not None:
            run_on_main(setup, kwargs={"run_opts": {"device": run_opts.get("device") or "cpu"}})
        hparams["teacher"] = FrozenTeacher(select(hparams["teachers"], hparams["teacher_kind"], "teacher_kind"))
    elif distiller.distills:
        teacher_cache = build_teacher_cache(
            hparams, run_opts, [hparams["train_annotation"], hparams["valid_annotation"]]
        )
        if teacher_cache.embedding_dim != hparams["teacher_dim"]:
            raise ValueError(
                f"teacher_dim is {hparams['teacher_dim']} but the teacher gives "
                f"{teacher_cache.embedding_dim}-d embeddings"
            )
    train_data, valid_data, _ = dataio_prep(hparams, teacher_cache)

    brain = SpeakerBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    train_loader_kwargs = dict(hparams["train_dataloader_opts"])
    train_loader_kwargs["batch_sampler"] = hparams["train_sampler"](train_data)
    brain.fit(
        brain.hparams.epoch_counter,
        train_data,
        valid_data,
        train_loader_kwargs=train_loader_kwargs,
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )

    trial_file = hparams.get("verification_file")
    if trial_file and not run_opts.get("debug"):
        results = run_on_main_and_return(brain, hparams, trial_file)
        if results is not None:
            print(json.dumps(results, indent=2))


def run_on_main_and_return(brain, hparams, trial_file):
    """Scores the trial list with the best checkpoint (main process only)."""
    if not sb.utils.distributed.if_main_process():
        return None
    checkpoint = brain.checkpointer.recover_if_possible(min_key=getattr(brain.hparams, "ckpt_key", "ErrorRate"))
    # With the checkpoint, the embeddings are cached where evaluate.py finds them.
    results = evaluate_trials(
        brain,
        trial_file,
        audio_root=hparams["trial_audio_root"],
        output_folder=hparams["output_folder"],
        sample_rate=hparams["sample_rate"],
        crop_seconds=hparams.get("test_crop_seconds", 4.0),
        n_crops=hparams.get("test_n_crops", 10),
        batch_size=hparams.get("test_batch_size", 32),
        name=hparams.get("trial_set_name", "trials"),
        checkpoint=checkpoint,
    )
    brain.hparams.train_logger.log_stats(
        stats_meta={"verification": Path(trial_file).name},
        test_stats={"EER": results["eer"] * 100, "minDCF": results["min_dcf"]},
    )
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
