#!/usr/bin/env python3
"""Image classifiers that learn from a text encoder: cross-modal distillation recipe.

An image student (torchvision ResNet18/34 without pretraining, or a compact
ResNet for fast runs) trains on CIFAR-100, Tiny-ImageNet-200 or the embedded
set while a frozen text encoder reading class prompts ("a photo of a maple
tree.", one of CLIP's 80 templates drawn per sample) teaches it through a
trainable projection head (Zhao et al., 2025, Sec. 4.2). The prompt
embeddings are computed once and cached; at test time only images are used.

    python recipes/CIFAR100/train.py recipes/CIFAR100/hparams/cifar100_resnet18_xmkd.yaml \
        --data_folder /data/cifar100 --output_folder results/r18
    python recipes/CIFAR100/train.py recipes/CIFAR100/hparams/synthetic_image_xmkd.yaml

Pick the row of a paper table with ``--method`` / ``--projection`` /
``--quality`` (see the yaml and tables.yaml). Resume: run the same command
again. After training, the best checkpoint is scored on the test list and
``<output_folder>/results.json`` gets top-1/top-5 accuracy and the
cross-modal matching accuracy (Table 8).
"""

import json
import logging
import os
import sys
from pathlib import Path

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import ddp_barrier, if_main_process, run_on_main

# Recipe-local modules (data preparation) are named in the yaml as `!name:module.function`.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from image_prepare import read_image  # noqa: E402

from speechbrain_xmkd.brain import XMKDBrain  # noqa: E402
from speechbrain_xmkd.classification import class_text_embeddings, matching_accuracy, topk_accuracy  # noqa: E402
from speechbrain_xmkd.config import select  # noqa: E402
from speechbrain_xmkd.subsets import fraction_per_class  # noqa: E402
from speechbrain_xmkd.teachers.prompts import TemplateSampler  # noqa: E402
from speechbrain_xmkd.teachers.text_cache import build_or_load_prompt_cache  # noqa: E402

logger = logging.getLogger(__name__)

RESULT_KEYS = ("method", "projection", "quality", "student", "teacher_kind", "data_fraction", "alpha", "margin", "beta", "seed")


class ImageBrain(XMKDBrain):
    """Image student: uint8 images -> normalised floats -> pooled embedding.

    The teacher embedding of a sample is the cached text embedding of its
    class under a template drawn for it (``template_sampler``, checkpointed).
    """

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        images = batch.image.data
        # uint8 through the loader, float and normalisation on the device.
        return self.modules.embedding_model(self.hparams.normalize(images.float().div_(255.0)))

    def prompt_table(self):
        """The ``[C, T, D]`` prompt embeddings on this run's device."""
        table = getattr(self, "_table", None)
        if table is None:
            table = self._table = self.hparams.prompt_embeddings.to(self.device)
        return table

    def teacher_embeddings(self, batch, stage):
        """``E_T[label, template]`` with one template drawn per sample."""
        table = self.prompt_table()
        labels = self.labels(batch).reshape(-1)
        sampler = self.hparams.template_sampler if stage == sb.Stage.TRAIN else self.eval_templates
        templates = sampler.draw(labels.shape[0], table.num_templates)
        return table.lookup(labels, templates), None

    def on_stage_start(self, stage, epoch=None):
        super().on_stage_start(stage, epoch)
        if stage != sb.Stage.TRAIN:
            # The same template draws at every evaluation: comparable losses.
            self.eval_templates = TemplateSampler(seed=self.hparams.seed)
        if stage == sb.Stage.TEST:
            self.test_embeddings, self.test_labels = [], []

    def compute_objectives(self, predictions, batch, stage):
        loss = super().compute_objectives(predictions, batch, stage)
        if stage == sb.Stage.TEST:
            self.test_embeddings.append(predictions.detach().float().cpu())
            self.test_labels.append(self.labels(batch).reshape(-1).cpu())
        return loss

    def stage_stats(self, stage, stage_loss):
        stats = super().stage_stats(stage, stage_loss)
        if stage == sb.Stage.TEST:
            self.test_results = self.score_test_set()
            stats["top1"] = 100 * self.test_results["top1"]
            stats["top5"] = 100 * self.test_results["top5"]
            if self.test_results["matching"]["accuracy"] is not None:
                stats["matching"] = 100 * self.test_results["matching"]["accuracy"]
        return stats

    def score_test_set(self):
        """Top-1/top-5 accuracy and cross-modal matching on the collected test outputs."""
        embeddings = torch.cat(self.test_embeddings)
        labels = torch.cat(self.test_labels)
        with torch.no_grad():
            logits = self.hparams.classifier(embeddings.to(self.device)).float().cpu()
        table = self.prompt_table()
        distiller = self.hparams.distiller
        metric = getattr(self.hparams, "matching_metric", "cosine")
        if distiller.projection is not None or table.embedding_dim == embeddings.shape[1]:
            # Eq. 4 in eval mode: F_T of every (class, template), mean over templates.
            project = distiller.project if distiller.projection is not None else None
            classes = class_text_embeddings(table.embeddings, project=project).float().cpu()
            matching = matching_accuracy(embeddings, classes, labels, metric=metric)
        else:
            matching = {
                "accuracy": None,
                "chance": 1.0 / table.num_classes,
                "metric": metric,
                "reason": f"no projection and teacher width {table.embedding_dim} != student width "
                f"{embeddings.shape[1]}",
            }
        matching["templates"] = table.num_templates
        return {
            "top1": topk_accuracy(logits, labels, k=1),
            "top5": topk_accuracy(logits, labels, k=5),
            "matching": matching,
            "num_test": int(labels.shape[0]),
            "num_classes": int(logits.shape[1]),
            "epoch": int(self.hparams.epoch_counter.current),
        }

    def on_stage_end(self, stage, stage_loss, epoch=None):
        super().on_stage_end(stage, stage_loss, epoch)
        if stage == sb.Stage.TEST and if_main_process():
            run = {key: _plain(getattr(self.hparams, key, None)) for key in RESULT_KEYS}
            results = {**self.test_results, "test_loss": float(stage_loss), "run": run}
            path = Path(self.hparams.output_folder) / "results.json"
            path.write_text(json.dumps(results, indent=2))
            logger.info("Wrote %s", path)


def _plain(value):
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def read_classes(path):
    """Reads ``classes.json``: ``[{"label", "name"}]`` in class-index order."""
    try:
        classes = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"'{path}' does not exist: run the data preparation (prepare_data)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"'{path}' is not valid json: {err}") from None
    if not isinstance(classes, list) or not classes:
        raise ValueError(f"'{path}' must be a non-empty list of {{'label', 'name'}} objects")
    for index, entry in enumerate(classes):
        if not isinstance(entry, dict) or not str(entry.get("label", "")).strip():
            raise ValueError(f"'{path}' entry {index} has no 'label'")
        if not str(entry.get("name", "")).strip():
            raise ValueError(
                f"class {entry['label']!r} ('{path}' entry {index}) has no name: every class "
                "needs words for its text prompts"
            )
    return classes


def _check_csv(path, labels):
    """Validates an image list's header and labels before a long run."""
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"ID", "path", "label"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}; expected the header ID,path,label")
        rows = 0
        for number, row in enumerate(reader, 2):
            rows += 1
            if row["label"] not in labels:
                raise ValueError(f"{path} line {number}: label {row['label']!r} is not a class of classes.json")
    if not rows:
        raise ValueError(f"{path}: no rows")


def _row_id(row):
    return row["ID"]


def dataio_prep(hparams, classes):
    """Train/valid/test datasets: decoded, augmented uint8 images and class indices."""
    labels = [entry["label"] for entry in classes]
    label_encoder = sb.dataio.encoder.CategoricalEncoder()
    # Class index = position in classes.json = row of the prompt table.
    label_encoder.update_from_iterable(labels)
    label_encoder.expect_len(len(labels))
    label_encoder.save(os.path.join(hparams["save_folder"], "label_encoder.txt"))

    datasets = {}
    for split in ("train", "valid", "test"):
        path = hparams[f"{split}_annotation"]
        _check_csv(path, set(labels))
        datasets[split] = sb.dataio.dataset.DynamicItemDataset.from_csv(
            csv_path=path, replacements={"data_root": hparams["data_folder"]}
        )
        csv_name = Path(path).name
        transform = hparams["train_transform"] if split == "train" else hparams["test_transform"]

        def image_pipeline(image_id, path, transform=transform, csv_name=csv_name):
            image = torch.from_numpy(read_image(path, where=f"{csv_name} row {image_id}")).permute(2, 0, 1)
            return transform(image.contiguous())

        pipeline = sb.utils.data_pipeline.takes("id", "path")(
            sb.utils.data_pipeline.provides("image")(image_pipeline)
        )
        sb.dataio.dataset.add_dynamic_item([datasets[split]], pipeline)

    @sb.utils.data_pipeline.takes("label")
    @sb.utils.data_pipeline.provides("label_encoded")
    def label_pipeline(label):
        return label_encoder.encode_label_torch(label)

    sb.dataio.dataset.add_dynamic_item(list(datasets.values()), label_pipeline)
    sb.dataio.dataset.set_output_keys(list(datasets.values()), ["id", "image", "label_encoded"])
    return datasets


def build_prompt_table(hparams, run_opts, class_names):
    """The cached prompt embeddings (computed on the main process if missing)."""
    device = run_opts.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")

    def build():
        teacher = select(hparams["teachers"], hparams["teacher_kind"], "teacher_kind")
        return build_or_load_prompt_cache(
            teacher,
            class_names,
            hparams["templates"],
            hparams["teacher_cache_folder"],
            batch_size=hparams.get("teacher_batch_size", 256),
            device=device,
        )

    table = build() if if_main_process() else None
    ddp_barrier()
    if table is None:  # other ranks read the finished file
        table = build()
    if table.embedding_dim != hparams["teacher_dim"]:
        raise ValueError(
            f"teacher_dim is {hparams['teacher_dim']} but the '{hparams['teacher_kind']}' teacher gives "
            f"{table.embedding_dim}-d embeddings: pass --teacher_dim={table.embedding_dim}"
        )
    return table


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
    classes = read_classes(hparams["classes_file"])
    if len(classes) != hparams["num_classes"]:
        raise ValueError(
            f"num_classes is {hparams['num_classes']} but {hparams['classes_file']} lists "
            f"{len(classes)} classes: pass --num_classes={len(classes)}"
        )
    width = hparams["embedding_model"].embedding_dim
    if width != hparams["emb_dim"]:
        raise ValueError(
            f"emb_dim is {hparams['emb_dim']} but the '{hparams['student']}' student gives "
            f"{width}-d embeddings: pass --emb_dim={width}"
        )
    fraction = hparams.get("data_fraction", 1.0)
    if fraction < 1:
        # Fig. 9: a seeded share of each class's training images.
        subset = os.path.join(hparams["save_folder"], f"train_fraction{fraction:g}.csv")
        run_on_main(
            fraction_per_class,
            args=[hparams["train_annotation"], subset, fraction, hparams.get("fraction_seed", 1234)],
            kwargs={"class_key": "label", "group_of": _row_id},
        )
        hparams["train_annotation"] = subset

    # The prompt table also serves the matching test, so even the plain
    # student (method=baseline) gets it; it is a cache read after the first run.
    hparams["prompt_embeddings"] = build_prompt_table(hparams, run_opts, [c["name"] for c in classes])
    datasets = dataio_prep(hparams, classes)
    batch_size = hparams["train_dataloader_opts"].get("batch_size", 1)
    if len(datasets["train"]) < batch_size:
        raise ValueError(
            f"{hparams['train_annotation']} has {len(datasets['train'])} images, fewer than one batch "
            f"of {batch_size} (the train loader drops incomplete batches)"
        )

    brain = ImageBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.fit(
        brain.hparams.epoch_counter,
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=dict(hparams["train_dataloader_opts"]),
        valid_loader_kwargs=dict(hparams["valid_dataloader_opts"]),
    )
    brain.evaluate(
        datasets["test"],
        min_key=getattr(brain.hparams, "ckpt_key", "ErrorRate"),
        test_loader_kwargs=dict(hparams["valid_dataloader_opts"]),
    )
    if if_main_process():
        print(json.dumps(brain.test_results, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
