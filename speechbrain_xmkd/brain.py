"""XMKDBrain: a SpeechBrain ``Brain`` with a frozen-teacher branch.

Modality-agnostic: a recipe subclasses it and writes ``compute_forward``
(student input -> student embedding); everything about the teacher, the
distillation objective, logging of the named loss terms, validation,
learning-rate annealing and checkpointing lives here, driven by the yaml.

What the yaml provides (``hparams``):

- ``distiller``: a :class:`~speechbrain_xmkd.Distiller` (also listed in
  ``modules`` so its projection head trains, is DDP-wrapped and moves to
  the device). It owns the student's classifier and task loss.
- ``classifier``: the student's task head (the same object the distiller
  holds), used for the validation error rate.
- ``label_key`` (default ``"spk_id"``): the batch carries
  ``<label_key>_encoded``.
- Teacher embeddings come from the batch: ``teacher_emb`` (from the
  teacher-embedding cache) and ``has_teacher`` (bool mask); or, when the
  batch has ``teacher_input`` instead (decoded uint8 images ``[B, H, W, 3]``),
  the frozen ``teacher`` in hparams (with a ``preprocess`` method, e.g. a
  :class:`~speechbrain_xmkd.teachers.FrozenTeacher`) runs on it under
  ``torch.no_grad``, after ``teacher_augment`` in training (e.g.
  :class:`~speechbrain_xmkd.teachers.FaceAugment`). The teacher is never in ``modules``: the optimizer never
  sees it, DDP never wraps it and ``modules.train()`` never flips it.
- ``student_augment`` (optional): a SpeechBrain ``Augmenter`` the recipe
  applies to the student input in training; labels and teacher rows are
  replicated to match the grown batch.
- ``lr_annealing`` (``epoch -> (old, new)``), ``train_logger``,
  ``error_stats``, ``checkpointer``; optional ``ckpt_key`` (default
  ``"ErrorRate"``, lower is better) and ``keep_checkpoints`` (default 1).
- ``valid_verification`` (optional): ``callable(brain, epoch) -> dict`` of
  extra validation stats, e.g. an
  :class:`~speechbrain_xmkd.evaluation.EpochVerifier` giving the test-set
  ``EER`` per epoch for the training curves (Fig. 6).

The train log has ``ErrorRate`` for training too (the classifier's argmax
on the training batches, margin-free), so ``1 - ErrorRate`` is the
training accuracy of Fig. 6.
"""

import logging

import speechbrain as sb
import torch

logger = logging.getLogger(__name__)


class XMKDBrain(sb.core.Brain):
    """Brain whose objective is the cross-modal distillation of Eq. 1.

    Subclasses implement ``compute_forward(batch, stage)`` returning the
    student embeddings ``[batch, dim]`` (or ``[batch, 1, dim]``).

    Example
    -------
    >>> import torch
    >>> from speechbrain_xmkd import Distiller
    >>> class TinyBrain(XMKDBrain):
    ...     def compute_forward(self, batch, stage):
    ...         return self.modules.student(batch.x)
    >>> head = torch.nn.Linear(3, 2)
    >>> distiller = Distiller(
    ...     "soft_feature", classifier=head, task_loss=torch.nn.functional.cross_entropy
    ... )
    >>> brain = TinyBrain(
    ...     modules={"student": torch.nn.Linear(4, 3), "distiller": distiller},
    ...     hparams={"distiller": distiller, "classifier": head, "label_key": "y"},
    ...     run_opts={"device": "cpu"},
    ... )
    >>> from types import SimpleNamespace
    >>> batch = SimpleNamespace(x=torch.randn(5, 4), y_encoded=torch.tensor([0, 1, 0, 1, 1]),
    ...                         teacher_emb=torch.randn(5, 3), has_teacher=torch.ones(5, dtype=torch.bool))
    >>> brain.on_stage_start(sb.Stage.TRAIN)
    >>> loss = brain.compute_objectives(brain.compute_forward(batch, sb.Stage.TRAIN), batch, sb.Stage.TRAIN)
    >>> sorted(brain.term_totals)
    ['soft_feature', 'task']
    """

    def on_fit_start(self):
        """Freezes the teacher (if any) on the run's device, then the usual start."""
        teacher = getattr(self.hparams, "teacher", None)
        if teacher is not None:
            teacher.to(self.device).eval()
            teacher.requires_grad_(False)
        super().on_fit_start()

    def _train_loader_specifics(self, dataset, loader_kwargs):
        """Lets a rank-aware batch sampler shard itself.

        SpeechBrain wraps any ``batch_sampler`` in a
        ``DistributedSamplerWrapper`` under DDP, and only calls ``set_epoch``
        on samplers it made. A batch sampler with ``handles_distributed =
        True`` (our :class:`~speechbrain_xmkd.sampling.SpeakerBalancedBatchSampler`)
        already deals whole batches to ranks, so it is used as is and given
        ``set_epoch`` every epoch.
        """
        batch_sampler = loader_kwargs.get("batch_sampler")
        if getattr(batch_sampler, "handles_distributed", False):
            self.train_sampler = batch_sampler
            return loader_kwargs
        return super()._train_loader_specifics(dataset, loader_kwargs)

    # ------------------------------------------------------------------
    # Teacher branch
    def teacher_embeddings(self, batch, stage):
        """Returns ``(E_T [batch, dim], mask [batch] bool)`` for a batch."""
        if hasattr(batch, "teacher_emb"):
            embeddings = _data(batch.teacher_emb)
            mask = getattr(batch, "has_teacher", None)
            mask = None if mask is None else _data(mask).to(torch.bool)
            return embeddings, mask
        teacher = getattr(self.hparams, "teacher", None)
        if teacher is None or not hasattr(batch, "teacher_input"):
            raise ValueError(
                "the batch has neither 'teacher_emb' (teacher-embedding cache) nor "
                "'teacher_input' with a 'teacher' in the yaml: the distiller has no teacher"
            )
        inputs = _data(batch.teacher_input)
        augment = getattr(self.hparams, "teacher_augment", None)
        with torch.no_grad():
            if augment is not None and stage == sb.Stage.TRAIN:
                # Pixel-scale [B, 3, H, W] in, the teacher's own preprocessing after.
                pixels = inputs.permute(0, 3, 1, 2).float() if inputs.shape[-1] == 3 else inputs.float()
                inputs = augment(pixels)
            embeddings = teacher(teacher.preprocess(inputs))
        mask = getattr(batch, "has_teacher", None)
        return embeddings, None if mask is None else _data(mask).to(torch.bool)

    # ------------------------------------------------------------------
    # Objectives and logging
    def labels(self, batch):
        key = getattr(self.hparams, "label_key", "spk_id")
        return _data(getattr(batch, f"{key}_encoded"))

    def compute_objectives(self, predictions, batch, stage):
        """Sums the distiller's named terms; keeps per-term running totals."""
        embeddings = predictions[0] if isinstance(predictions, (tuple, list)) else predictions
        labels = self.labels(batch)
        distiller = self.hparams.distiller
        if distiller.distills:
            teacher, mask = self.teacher_embeddings(batch, stage)
        else:
            teacher, mask = None, None
        augment = getattr(self.hparams, "student_augment", None)
        if stage == sb.Stage.TRAIN and augment is not None and embeddings.shape[0] != labels.shape[0]:
            # SpeechBrain's Augmenter concatenates augmented copies to the
            # batch: every per-sample target follows them.
            labels = augment.replicate_labels(labels)
            if teacher is not None:
                teacher = augment.replicate_labels(teacher)
            if mask is not None:
                mask = augment.replicate_labels(mask)
        terms = self.modules.distiller(embeddings, teacher, labels, mask=mask)
        loss = sum(terms.values())

        self.term_count += 1
        for name, value in terms.items():
            # Kept on the device: no host sync per step.
            self.term_totals[name] = self.term_totals.get(name, 0.0) + value.detach().float()
        if mask is not None:
            self.missing_teacher += (~mask).sum()

        with torch.no_grad():
            logits = self.hparams.classifier(embeddings.detach())
        if logits.dim() == 3:
            logits = logits.squeeze(1)
        if stage == sb.Stage.TRAIN:
            # Training accuracy (Fig. 6) as a running count on the device:
            # no host sync per step, no per-sample list over a long epoch.
            self.train_errors += (logits.argmax(dim=-1) != labels.reshape(-1)).sum()
            self.train_samples += labels.numel()
        else:
            ids = getattr(batch, "id", None)
            self.error_metrics.append(
                ids if ids is not None else list(range(len(labels))),
                logits.unsqueeze(1),
                labels.reshape(-1, 1),
            )
        return loss

    def on_stage_start(self, stage, epoch=None):
        self.term_totals = {}
        self.term_count = 0
        self.missing_teacher = torch.zeros((), dtype=torch.long, device=self.device)
        self.train_errors = torch.zeros((), dtype=torch.long, device=self.device)
        self.train_samples = 0
        if stage != sb.Stage.TRAIN:
            self.error_metrics = self.hparams.error_stats()

    def stage_stats(self, stage, stage_loss):
        """The stage's loss, the mean of each named term and the error rate."""
        stats = {"loss": stage_loss}
        for name, total in self.term_totals.items():
            stats[name] = float(total) / max(self.term_count, 1)
        missing = int(self.missing_teacher)
        if missing:
            stats["no_teacher"] = missing
        if stage != sb.Stage.TRAIN:
            stats["ErrorRate"] = self.error_metrics.summarize("average")
        elif self.train_samples:
            stats["ErrorRate"] = float(self.train_errors) / self.train_samples
        return stats

    def on_stage_end(self, stage, stage_loss, epoch=None):
        stats = self.stage_stats(stage, stage_loss)
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            if stats.get("no_teacher"):
                logger.info(
                    "epoch %s: %d training samples had no usable teacher input "
                    "and trained without the distillation term",
                    epoch,
                    stats["no_teacher"],
                )
            return
        if stage == sb.Stage.VALID:
            verifier = getattr(self.hparams, "valid_verification", None)
            if verifier is not None:
                stats.update(verifier(self, epoch))
            stats_meta = {"epoch": epoch}
            annealing = getattr(self.hparams, "lr_annealing", None)
            if annealing is not None:
                old_lr, new_lr = annealing(epoch)
                sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
                stats_meta["lr"] = old_lr
            self.hparams.train_logger.log_stats(
                stats_meta=stats_meta,
                train_stats=getattr(self, "train_stats", None),
                valid_stats=stats,
            )
            if self.checkpointer is not None:
                key = getattr(self.hparams, "ckpt_key", "ErrorRate")
                self.checkpointer.save_and_keep_only(
                    meta={key: stats[key], "epoch": epoch},
                    min_keys=[key],
                    num_to_keep=getattr(self.hparams, "keep_checkpoints", 1),
                )
        elif stage == sb.Stage.TEST:
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                test_stats=stats,
            )
        self.last_stats = stats


def _data(value):
    """The tensor inside a ``PaddedData`` (or the tensor itself)."""
    return getattr(value, "data", value)
