"""Speaker-balanced batches: P speakers x K utterances, DDP-aware.

The paper trains the speaker student on batches of 100 speakers x 2
utterances. :class:`SpeakerBalancedBatchSampler` is a ``batch_sampler`` that
yields such batches (lists of dataset indices), reproducibly per
``(seed, epoch)``, and deals them out to DDP ranks itself.

Using it with SpeechBrain's ``Brain``
-------------------------------------
What ``Brain.make_dataloader`` (speechbrain 1.1.2, ``core.py``) does with a
``batch_sampler`` given in ``train_loader_kwargs``:

* single process: the sampler is passed to the ``SaveableDataLoader`` as is,
  but ``Brain.train_sampler`` stays ``None``, so ``set_epoch`` is never
  called and every epoch repeats the same batches;
* DDP (``torchrun``): ``_train_loader_specifics`` wraps any batch sampler in
  ``DistributedSamplerWrapper``, which shards the *list of batches* again.
  This sampler already shards (it reads the world size from
  ``torch.distributed``), so each rank would see about 1/world^2 of the
  epoch.

:class:`~speechbrain_xmkd.brain.XMKDBrain` knows this sampler (it has
``handles_distributed = True``): with it, passing
``train_loader_kwargs={"batch_sampler": sampler}`` to ``fit`` is right, in
one process and under DDP alike. With a plain ``Brain``, build the train
loader outside the Brain with
:func:`make_speaker_balanced_loader` and pass the loader (not the dataset)
to ``fit``: ``fit`` only wraps datasets, the helper sets
``brain.train_sampler`` (so ``Brain`` calls ``set_epoch`` every epoch) and
registers the loader with the checkpointer under the same key
(``dataloader-TRAIN``) that ``Brain.make_dataloader`` would use, so
intra-epoch resumption works. In the recipe::

    sampler = hparams["train_sampler"](train_data)  # !name: partial, below
    loader = make_speaker_balanced_loader(
        train_data, sampler, brain=brain, num_workers=4
    )
    brain.fit(epoch_counter, loader, valid_data, valid_loader_kwargs=...)

(``train_loader_kwargs={"batch_sampler": sampler}`` is only right under
DDP with ``num_replicas=1, rank=0`` on the sampler, letting Brain's wrapper
shard it; that wrapper reshuffles the batch order and pads a short last
round with repeated batches.)

In the yaml (the labels come from the dataset, which only exists once
the recipe has built it, hence ``!name:`` and the ``from_dataset``
classmethod)::

    train_sampler: !name:speechbrain_xmkd.sampling.SpeakerBalancedBatchSampler.from_dataset
        key: spk_id
        speakers_per_batch: 100
        utterances_per_speaker: 2
        seed: !ref <seed>

Authors
 * speechbrain-xmkd contributors
"""

import json
import logging
import math

import numpy as np
import torch
from torch.utils.data import Sampler

from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

logger = logging.getLogger(__name__)


@register_checkpoint_hooks
class SpeakerBalancedBatchSampler(Sampler):
    """Batch sampler with exactly P distinct speakers x K utterances each.

    Epoch definition. Let ``U`` be the number of eligible utterances (those
    of speakers with at least ``K`` utterances) and ``W`` the number of
    replicas. An epoch holds ``B = floor(U / (P*K))`` batches in total,
    rounded down to a multiple of ``W`` (``drop_last=True``), or
    ``ceil(U / (P*K))`` rounded up to a multiple of ``W``
    (``drop_last=False``), so one epoch draws about ``U`` utterances and
    every rank gets ``B / W`` batches. Batches are always complete: the
    remainder is handled by the epoch length, never by a short batch.

    Each speaker ``s`` with ``n_s`` utterances gets a quota of ``q_s``
    batches, proportional to ``n_s`` (largest-remainder rounding, ties
    broken at random per epoch), capped at ``B`` because a speaker can be in
    a batch at most once, with ``sum(q_s) = B*P``. Its ``q_s*K`` draws walk
    through fresh random permutations of its utterances, so no utterance
    repeats before all of that speaker's utterances were used: every
    utterance of ``s`` appears at least ``floor(q_s*K / n_s)`` times per
    epoch. Speakers are placed in batches by weighted sampling without
    replacement (weights = remaining quota); a speaker whose remaining quota
    equals the number of remaining batches is always taken, which keeps
    every batch feasible.

    DDP: the global list of ``B`` batches depends only on
    ``(labels, seed, epoch)``, so every rank builds the same list and keeps
    batches ``rank, rank + W, rank + 2W, ...``: ranks never share a batch
    and all get the same count.

    Arguments
    ---------
    labels : sequence
        Speaker id (str or int) of every dataset index.
    speakers_per_batch : int
        Distinct speakers per batch (P).
    utterances_per_speaker : int
        Utterances of each speaker per batch (K). Speakers with fewer
        utterances are excluded with a logged warning.
    seed : int
        Base seed; the batches of an epoch are a function of (seed, epoch).
    drop_last : bool
        Round the epoch length down (True) or up (False); see above.
    num_replicas : int, optional
        World size. Default: ``torch.distributed``'s world size when it is
        initialised, else 1. Read once, at construction.
    rank : int, optional
        This process's rank. Default: ``torch.distributed``'s rank when it is
        initialised, else 0.
    epoch : int
        Epoch to start at (``set_epoch`` changes it).

    Example
    -------
    >>> labels = ["a", "a", "b", "b", "c", "c", "c", "c"]
    >>> sampler = SpeakerBalancedBatchSampler(
    ...     labels, speakers_per_batch=2, utterances_per_speaker=2, seed=1
    ... )
    >>> len(sampler)
    2
    >>> sampler.set_epoch(0)
    >>> for batch in sampler:
    ...     speakers = [labels[i] for i in batch]
    ...     assert len(batch) == 4 and len(set(speakers)) == 2
    """

    # Read by XMKDBrain: this sampler shards itself across DDP ranks.
    handles_distributed = True


    def __init__(
        self,
        labels,
        speakers_per_batch=100,
        utterances_per_speaker=2,
        seed=563375142,
        drop_last=True,
        num_replicas=None,
        rank=None,
        epoch=0,
    ):
        if speakers_per_batch < 1 or utterances_per_speaker < 1:
            raise ValueError(
                "speakers_per_batch and utterances_per_speaker must be >= 1, "
                f"got {speakers_per_batch} and {utterances_per_speaker}"
            )
        self.speakers_per_batch = int(speakers_per_batch)
        self.utterances_per_speaker = int(utterances_per_speaker)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = int(epoch)
        self.num_replicas, self.rank = _resolve_replicas(num_replicas, rank)

        labels = list(labels)
        # Speakers in order of first appearance: a stable, hash-free order,
        # identical on every rank (required for identical global batches).
        groups = {}
        for index, label in enumerate(labels):
            groups.setdefault(label, []).append(index)
        K, P = self.utterances_per_speaker, self.speakers_per_batch
        small = [s for s, idx in groups.items() if len(idx) < K]
        if small:
            dropped = sum(len(groups[s]) for s in small)
            logger.warning(
                "SpeakerBalancedBatchSampler: %d of %d speakers have fewer "
                "than utterances_per_speaker=%d utterances and are excluded "
                "(%d of %d utterances unused), e.g. %s",
                len(small),
                len(groups),
                K,
                dropped,
                len(labels),
                ", ".join(repr(s) for s in small[:5]),
            )
        self.speakers = [s for s in groups if len(groups[s]) >= K]
        if len(self.speakers) < P:
            raise ValueError(
                f"only {len(self.speakers)} speakers have at least "
                f"utterances_per_speaker={K} utterances ({len(groups)} "
                f"speakers in {len(labels)} labels, {len(small)} excluded), "
                f"but speakers_per_batch={P} distinct speakers are needed "
                "per batch"
            )
        self._utterances = [
            np.asarray(groups[s], dtype=np.int64) for s in self.speakers
        ]
        self._counts = np.array([len(u) for u in self._utterances])
        self.num_utterances = int(self._counts.sum())

        per_epoch = self.num_utterances / (P * K)
        W = self.num_replicas
        if self.drop_last:
            total = (math.floor(per_epoch) // W) * W
        else:
            total = math.ceil(math.ceil(per_epoch) / W) * W
        if total == 0:
            raise ValueError(
                f"{self.num_utterances} eligible utterances are not enough "
                f"for one batch of {P} speakers x {K} utterances = {P * K} "
                f"on each of num_replicas={W}; use drop_last=False, smaller "
                "batches or more data"
            )
        self.num_batches_total = total

    @classmethod
    def from_dataset(cls, dataset, key="spk_id", **kwargs):
        """Builds the sampler from a column of a ``DynamicItemDataset``.

        A static column (one of the csv/json fields) is read straight from
        ``dataset.data``, so no audio is loaded; a dynamic item is computed
        with ``dataset.output_keys_as([key])``, which only runs the
        pipeline functions that this key needs.

        Arguments
        ---------
        dataset : speechbrain.dataio.dataset.DynamicItemDataset
            The training set (filtered/sorted views are fine: their index
            order is used).
        key : str
            Name of the speaker column.
        **kwargs : dict
            Passed to the constructor.

        Returns
        -------
        SpeakerBalancedBatchSampler

        Example
        -------
        >>> from speechbrain.dataio.dataset import DynamicItemDataset
        >>> data = {f"u{i}": {"spk_id": f"s{i % 3}"} for i in range(12)}
        >>> dataset = DynamicItemDataset(data)
        >>> sampler = SpeakerBalancedBatchSampler.from_dataset(
        ...     dataset, "spk_id", speakers_per_batch=3,
        ...     utterances_per_speaker=2,
        ... )
        >>> len(sampler)
        2
        """
        data_ids = dataset.data_ids
        if data_ids and key in dataset.data[data_ids[0]]:
            labels = [dataset.data[i][key] for i in data_ids]
        else:
            with dataset.output_keys_as([key]):
                labels = [dataset[i][key] for i in range(len(dataset))]
        labels = [_hashable(x) for x in labels]
        return cls(labels, **kwargs)

    def set_epoch(self, epoch):
        """Selects the epoch whose batches the next iteration yields.

        ``Brain`` calls it at the start of every epoch on
        ``brain.train_sampler`` (see :func:`make_speaker_balanced_loader`).

        Arguments
        ---------
        epoch : int
            Epoch number.
        """
        self.epoch = int(epoch)

    def __len__(self):
        return self.num_batches_total // self.num_replicas

    def __iter__(self):
        batches = self.global_batches(self.epoch)
        return iter(batches[self.rank :: self.num_replicas])

    def global_batches(self, epoch):
        """All batches of an epoch, before dealing them out to the ranks.

        Arguments
        ---------
        epoch : int
            Epoch number.

        Returns
        -------
        list of list of int
            ``num_batches_total`` batches; each lists ``P*K`` dataset
            indices grouped by speaker (the first ``K`` share a speaker).
        """
        # A generator seeded from (seed, epoch) alone makes the plan
        # identical on every rank and reproducible after resumption.
        rng = np.random.default_rng([self.seed, int(epoch)])
        B, P, K = (
            self.num_batches_total,
            self.speakers_per_batch,
            self.utterances_per_speaker,
        )
        quota = _apportion(self._counts, B * P, B, rng)

        draws = [
            _cycled_draws(utts, int(q), K, rng)
            for utts, q in zip(self._utterances, quota)
        ]
        used = np.zeros(len(quota), dtype=np.int64)

        remaining = quota.copy()
        batches = []
        for rounds_left in range(B, 0, -1):
            # A speaker owed a batch in every remaining round must be taken
            # now; at most P can be (sum(remaining) == rounds_left * P).
            forced = np.flatnonzero(remaining == rounds_left)
            free = P - len(forced)
            chosen = forced
            if free > 0:
                weights = remaining.astype(np.float64)
                weights[forced] = 0.0
                candidates = np.flatnonzero(weights > 0)
                # Efraimidis-Spirakis: top keys u^(1/w) is a weighted sample
                # without replacement.
                keys = np.log(rng.random(len(candidates))) / weights[candidates]
                top = candidates[np.argpartition(-keys, free - 1)[:free]]
                chosen = np.concatenate([forced, top])
            chosen = rng.permutation(chosen)
            batch = []
            for s in chosen:
                batch.extend(draws[s][used[s]].tolist())
            used[chosen] += 1
            remaining[chosen] -= 1
            batches.append(batch)
        return batches

    @mark_as_saver
    def _save(self, path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"epoch": self.epoch, "seed": self.seed}, f)

    @mark_as_loader
    def _load(self, path, end_of_epoch):
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        # After a finished epoch the next one starts; Brain also calls
        # set_epoch, this keeps standalone loops right.
        self.epoch = state["epoch"] + (1 if end_of_epoch else 0)


def make_speaker_balanced_loader(
    dataset, batch_sampler, brain=None, **loader_kwargs
):
    """Train DataLoader around a batch sampler that shards itself.

    Use it instead of ``train_loader_kwargs={"batch_sampler": ...}``:
    ``Brain.make_dataloader`` would not call ``set_epoch`` on the sampler
    (single process) or would shard it a second time with
    ``DistributedSamplerWrapper`` (DDP). Pass the returned loader to
    ``Brain.fit`` in place of the dataset.

    Arguments
    ---------
    dataset : torch.utils.data.Dataset
        The training set (a ``DynamicItemDataset`` gets ``PaddedBatch``
        collation, as in SpeechBrain).
    batch_sampler : SpeakerBalancedBatchSampler
        The sampler (any batch sampler with ``set_epoch`` works).
    brain : speechbrain.core.Brain, optional
        If given, ``brain.train_sampler`` is set (so ``fit`` calls
        ``set_epoch`` every epoch) and the loader is added to
        ``brain.checkpointer`` as ``dataloader-TRAIN``, the key
        ``Brain.make_dataloader`` uses, for intra-epoch resumption.
    **loader_kwargs : dict
        Other DataLoader arguments (num_workers, pin_memory, collate_fn).
        ``batch_size``, ``shuffle``, ``sampler`` and ``drop_last`` are
        decided by the batch sampler and rejected here.

    Returns
    -------
    speechbrain.dataio.dataloader.SaveableDataLoader

    Example
    -------
    >>> from speechbrain.dataio.dataset import DynamicItemDataset
    >>> data = {f"u{i}": {"spk_id": f"s{i % 3}"} for i in range(12)}
    >>> dataset = DynamicItemDataset(data, output_keys=["id", "spk_id"])
    >>> sampler = SpeakerBalancedBatchSampler.from_dataset(
    ...     dataset, speakers_per_batch=3, utterances_per_speaker=2
    ... )
    >>> loader = make_speaker_balanced_loader(dataset, sampler)
    >>> batch = next(iter(loader))
    >>> len(batch.id), len(set(batch.spk_id))
    (6, 3)
    """
    from speechbrain.dataio.dataloader import make_dataloader

    clashing = {
        "batch_size",
        "shuffle",
        "sampler",
        "drop_last",
        "batch_sampler",
    }
    clashing &= set(loader_kwargs)
    if clashing:
        raise ValueError(
            f"loader arguments {sorted(clashing)} conflict with "
            "batch_sampler; set them on the sampler instead"
        )
    loader = make_dataloader(
        dataset, batch_sampler=batch_sampler, **loader_kwargs
    )
    if brain is not None:
        brain.train_sampler = batch_sampler
        if brain.checkpointer is not None:
            brain.checkpointer.add_recoverable("dataloader-TRAIN", loader)
    return loader


def _resolve_replicas(num_replicas, rank):
    """Fills world size / rank from torch.distributed when not given."""
    dist = torch.distributed
    initialised = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    num_replicas, rank = int(num_replicas), int(rank)
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(
            f"need num_replicas >= 1 and 0 <= rank < num_replicas, got "
            f"num_replicas={num_replicas}, rank={rank}"
        )
    return num_replicas, rank


def _apportion(counts, total, cap, rng):
    """Integer quotas proportional to ``counts``, each <= cap, summing to total.

    Water-filling: speakers whose share exceeds ``cap`` are set to ``cap``
    and the rest is shared again among the others; then largest-remainder
    rounding with random tie-breaks (so who gets the rounding extra changes
    from epoch to epoch).
    """
    counts = counts.astype(np.float64)
    target = np.zeros_like(counts)
    capped = np.zeros(len(counts), dtype=bool)
    while True:
        left = total - cap * capped.sum()
        free = ~capped
        target[capped] = cap
        target[free] = left * counts[free] / counts[free].sum()
        over = free & (target > cap)
        if not over.any():
            break
        capped |= over
    quota = np.minimum(np.floor(target + 1e-9), cap).astype(np.int64)
    short = total - int(quota.sum())
    while short > 0:
        open_ = np.flatnonzero(quota < cap)
        frac = (target - quota)[open_]
        # Largest fractional part first, random among equals.
        order = np.lexsort((rng.random(len(open_)), -frac))
        take = open_[order[:short]]
        quota[take] += 1
        short -= len(take)
    return quota


def _cycled_draws(utterances, chunks, K, rng):
    """``chunks`` rows of ``K`` distinct utterances, cycled without replacement.

    Successive random permutations of ``utterances`` are concatenated, so no
    utterance repeats before all were used. A row that straddles two
    permutations would repeat an utterance when ``len(utterances)`` is not
    a multiple of ``K``; the next permutation therefore moves the row's
    first part to its end (still one use per pass, needs
    ``len(utterances) >= K``).
    """
    need = chunks * K
    parts, filled = [], 0
    while filled < need:
        perm = rng.permutation(utterances)
        straddle = filled % K
        if straddle:
            clash = np.isin(perm, parts[-1][-straddle:])
            perm = np.concatenate([perm[~clash], perm[clash]])
        take = min(len(perm), need - filled)
        parts.append(perm[:take])
        filled += take
    if not parts:
        return utterances[:0].reshape(0, K)
    return np.concatenate(parts).reshape(chunks, K)


def _hashable(label):
    """Speaker ids may come out of a pipeline as 0-d tensors or lists."""
    if isinstance(label, torch.Tensor):
        return label.item() if label.numel() == 1 else tuple(label.tolist())
    if isinstance(label, list):
        return tuple(label)
    return label
