"""Tests for speechbrain_xmkd.sampling.SpeakerBalancedBatchSampler."""

import collections
import logging
import os
import socket

import numpy as np
import pytest
import torch

from speechbrain_xmkd.sampling import (
    SpeakerBalancedBatchSampler,
    make_speaker_balanced_loader,
)


def _labels(counts):
    """Speaker 'sX' repeated counts[X] times, interleaved like a real csv."""
    rng = np.random.default_rng(0)
    labels = [f"s{s}" for s, n in enumerate(counts) for _ in range(n)]
    return [labels[i] for i in rng.permutation(len(labels))]


UNEVEN = [2, 3, 5, 7, 4, 9, 12, 2, 6, 3, 8, 4, 5, 11]


def _check_batch(batch, labels, P, K):
    assert len(batch) == P * K
    assert len(set(batch)) == P * K, "an index repeats inside a batch"
    per_speaker = collections.Counter(labels[i] for i in batch)
    assert len(per_speaker) == P
    assert set(per_speaker.values()) == {K}


@pytest.mark.parametrize("P,K", [(4, 2), (3, 3), (5, 1)])
def test_every_batch_has_p_speakers_times_k_utterances(P, K):
    labels = _labels(UNEVEN)
    sampler = SpeakerBalancedBatchSampler(labels, P, K, seed=7)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) > 0
        for batch in batches:
            _check_batch(batch, labels, P, K)


def test_grouped_by_speaker_inside_a_batch():
    labels = _labels(UNEVEN)
    sampler = SpeakerBalancedBatchSampler(labels, 4, 3, seed=7)
    for batch in sampler:
        for start in range(0, len(batch), 3):
            assert len({labels[i] for i in batch[start : start + 3]}) == 1


def test_deterministic_per_seed_and_epoch_and_different_across_epochs():
    labels = _labels(UNEVEN)
    a = SpeakerBalancedBatchSampler(labels, 4, 2, seed=11)
    b = SpeakerBalancedBatchSampler(labels, 4, 2, seed=11)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    assert list(a) == list(a), "iterating twice must not change the epoch"
    b.set_epoch(4)
    assert list(a) != list(b)
    c = SpeakerBalancedBatchSampler(labels, 4, 2, seed=12, epoch=3)
    assert list(a) != list(c)


def test_epoch_length_definition():
    labels = _labels(UNEVEN)  # 81 utterances, all speakers eligible for K=2
    assert len(labels) == 81
    # floor(81 / 8) = 10 batches; ceil = 11.
    assert len(SpeakerBalancedBatchSampler(labels, 4, 2)) == 10
    assert len(SpeakerBalancedBatchSampler(labels, 4, 2, drop_last=False)) == 11
    # K=3: speakers with 2 utterances (two of them, 4 utts) drop -> 77 / 12.
    assert len(SpeakerBalancedBatchSampler(labels, 4, 3)) == 6


def test_exact_coverage_when_everything_divides():
    # 6 speakers x 4 utterances, batches of 3 x 2 -> 4 batches covering
    # every utterance exactly once.
    labels = _labels([4] * 6)
    sampler = SpeakerBalancedBatchSampler(labels, 3, 2, seed=5)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        seen = collections.Counter(i for b in sampler for i in b)
        assert sorted(seen) == list(range(len(labels)))
        assert set(seen.values()) == {1}


@pytest.mark.parametrize("drop_last", [True, False])
def test_coverage_without_replacement_and_proportional_quota(drop_last):
    labels = _labels(UNEVEN)
    P, K = 4, 2
    sampler = SpeakerBalancedBatchSampler(
        labels, P, K, seed=3, drop_last=drop_last
    )
    by_speaker = collections.defaultdict(list)
    for i, s in enumerate(labels):
        by_speaker[s].append(i)
    U = len(labels)
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        seen = collections.Counter(i for b in batches for i in b)
        total_draws = len(batches) * P * K
        for s, utts in by_speaker.items():
            draws = sum(seen[i] for i in utts)
            # Cycling without replacement: each utterance appears
            # floor(draws / n) or ceil(draws / n) times.
            lo, hi = draws // len(utts), -(-draws // len(utts))
            assert all(lo <= seen[i] <= hi for i in utts), s
            # The share of draws follows the share of utterances (no speaker
            # is near 1/P of the data, so nothing is capped here).
            assert abs(draws / K - total_draws / K * len(utts) / U) < 1 + 1e-9


def test_dominant_speaker_is_capped_at_one_slot_per_batch():
    # Speaker s0 holds 60 of 90 utterances: more than 1/P of the data.
    labels = _labels([60, 6, 6, 6, 6, 6])
    sampler = SpeakerBalancedBatchSampler(labels, 3, 2, seed=1)
    batches = list(sampler)
    assert len(batches) == 15
    for batch in batches:
        _check_batch(batch, labels, 3, 2)
        assert sum(labels[i] == "s0" for i in batch) == 2
    # The 30 other slots (60 draws) go to the 30 other utterances evenly:
    # twice each; s0's 30 draws never repeat one of its 60 utterances.
    seen = collections.Counter(i for b in batches for i in b)
    assert all(seen[i] == 2 for i, s in enumerate(labels) if s != "s0")
    assert max(seen[i] for i, s in enumerate(labels) if s == "s0") == 1


def test_two_ranks_get_disjoint_equal_batches():
    labels = _labels(UNEVEN)  # 10 global batches of 8
    r0 = SpeakerBalancedBatchSampler(
        labels, 4, 2, seed=9, num_replicas=2, rank=0
    )
    r1 = SpeakerBalancedBatchSampler(
        labels, 4, 2, seed=9, num_replicas=2, rank=1
    )
    for epoch in (0, 1):
        r0.set_epoch(epoch)
        r1.set_epoch(epoch)
        b0, b1 = list(r0), list(r1)
        assert len(b0) == len(b1) == len(r0) == len(r1) == 5
        assert not {tuple(b) for b in b0} & {tuple(b) for b in b1}
        for batch in b0 + b1:
            _check_batch(batch, labels, 4, 2)
        # Together they are exactly the single-process epoch.
        single = SpeakerBalancedBatchSampler(labels, 4, 2, seed=9, epoch=epoch)
        assert sorted(b0 + b1) == sorted(single.global_batches(epoch))


@pytest.mark.parametrize("drop_last,per_rank", [(True, 3), (False, 4)])
def test_ranks_equal_counts_when_batches_do_not_divide(drop_last, per_rank):
    labels = _labels(UNEVEN)  # floor 10 / ceil 11 global batches
    samplers = [
        SpeakerBalancedBatchSampler(
            labels, 4, 2, seed=9, drop_last=drop_last, num_replicas=3, rank=r
        )
        for r in range(3)
    ]
    outs = [list(s) for s in samplers]
    assert [len(o) for o in outs] == [per_rank] * 3
    assert [len(s) for s in samplers] == [per_rank] * 3
    flat = [tuple(b) for o in outs for b in o]
    assert len(set(flat)) == len(flat)


def test_excluded_speakers_warning_names_numbers(caplog):
    labels = ["a"] * 3 + ["b"] * 1 + ["c"] * 4 + ["d"] * 2 + ["e"] * 3
    with caplog.at_level(logging.WARNING, logger="speechbrain_xmkd.sampling"):
        sampler = SpeakerBalancedBatchSampler(labels, 2, 3)
    text = caplog.text
    assert "2 of 5 speakers" in text
    assert "utterances_per_speaker=3" in text
    assert "3 of 13 utterances unused" in text
    assert "'b'" in text and "'d'" in text
    assert sampler.speakers == ["a", "c", "e"]
    for batch in sampler:
        assert not {labels[i] for i in batch} & {"b", "d"}


def test_too_few_speakers_is_an_error_with_numbers():
    labels = ["a"] * 3 + ["b"] * 1 + ["c"] * 4
    with pytest.raises(ValueError) as err:
        SpeakerBalancedBatchSampler(labels, 3, 2)
    msg = str(err.value)
    assert "only 2 speakers" in msg and "speakers_per_batch=3" in msg
    assert "1 excluded" in msg


def test_too_few_utterances_for_the_replicas_is_an_error():
    labels = _labels([2, 2, 2])  # one batch of 3 x 2 in total
    with pytest.raises(ValueError, match="num_replicas=2"):
        SpeakerBalancedBatchSampler(labels, 3, 2, num_replicas=2, rank=0)
    # Rounding up instead gives each rank one batch.
    s = SpeakerBalancedBatchSampler(
        labels, 3, 2, drop_last=False, num_replicas=2, rank=1
    )
    assert len(list(s)) == 1


def test_bad_rank_is_an_error():
    with pytest.raises(ValueError, match="rank=2"):
        SpeakerBalancedBatchSampler(
            _labels(UNEVEN), 4, 2, num_replicas=2, rank=2
        )


class _TinySet(torch.utils.data.Dataset):
    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.tensor([float(i)]), i


def test_inside_a_torch_dataloader():
    labels = [i % 5 for i in range(30)]  # int speaker ids
    sampler = SpeakerBalancedBatchSampler(labels, 5, 2, seed=0)
    loader = torch.utils.data.DataLoader(
        _TinySet(labels), batch_sampler=sampler
    )
    assert len(loader) == 3
    for feats, index in loader:
        assert feats.shape == (10, 1)
        assert sorted(labels[i] for i in index.tolist()) == sorted(
            list(range(5)) * 2
        )


def _dynamic_dataset(n=12):
    from speechbrain.dataio.dataset import DynamicItemDataset
    import speechbrain as sb

    data = {
        f"u{i}": {"spk_id": f"s{i % 3}", "wav": f"missing_{i}.wav"}
        for i in range(n)
    }
    dataset = DynamicItemDataset(data)

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio(wav):
        raise AssertionError(f"audio must not be loaded: {wav}")

    @sb.utils.data_pipeline.takes("spk_id")
    @sb.utils.data_pipeline.provides("spk_code")
    def code(spk_id):
        return int(spk_id[1:])

    dataset.add_dynamic_item(audio)
    dataset.add_dynamic_item(code)
    dataset.set_output_keys(["id", "sig", "spk_code"])
    return dataset


def test_from_dataset_reads_static_and_dynamic_columns_without_audio():
    dataset = _dynamic_dataset()
    static = SpeakerBalancedBatchSampler.from_dataset(
        dataset, "spk_id", speakers_per_batch=3, utterances_per_speaker=2
    )
    dynamic = SpeakerBalancedBatchSampler.from_dataset(
        dataset, "spk_code", speakers_per_batch=3, utterances_per_speaker=2
    )
    assert static.speakers == ["s0", "s1", "s2"]
    assert dynamic.speakers == [0, 1, 2]
    assert list(static) == list(dynamic)
    # The dataset's own output keys are restored.
    assert dataset.pipeline.output_mapping == {
        "id": "id",
        "sig": "sig",
        "spk_code": "spk_code",
    }
    # A filtered view uses its own index order.
    view = dataset.filtered_sorted(key_test={"spk_id": lambda s: s != "s2"})
    sub = SpeakerBalancedBatchSampler.from_dataset(
        view, speakers_per_batch=2, utterances_per_speaker=2
    )
    assert len(view) == 8 and sub.num_utterances == 8


def test_speechbrain_loader_and_checkpoint(tmp_path):
    from speechbrain.utils.checkpoints import Checkpointer

    dataset = _dynamic_dataset()
    dataset.set_output_keys(["id", "spk_id"])
    sampler = SpeakerBalancedBatchSampler.from_dataset(
        dataset, speakers_per_batch=3, utterances_per_speaker=2, seed=4
    )
    loader = make_speaker_balanced_loader(dataset, sampler)
    batch = next(iter(loader))
    assert len(batch.id) == 6 and len(set(batch.spk_id)) == 3

    sampler.set_epoch(5)
    ckpt = Checkpointer(tmp_path, recoverables={"sampler": sampler})
    ckpt.save_checkpoint(end_of_epoch=False)
    fresh = SpeakerBalancedBatchSampler.from_dataset(
        dataset, speakers_per_batch=3, utterances_per_speaker=2, seed=4
    )
    Checkpointer(
        tmp_path, recoverables={"sampler": fresh}
    ).recover_if_possible()
    assert fresh.epoch == 5 and list(fresh) == list(sampler)

    with pytest.raises(ValueError, match="batch_size"):
        make_speaker_balanced_loader(dataset, sampler, batch_size=4)


def test_brain_calls_set_epoch_through_the_helper(tmp_path):
    import speechbrain as sb
    from speechbrain.utils.checkpoints import Checkpointer
    from speechbrain.utils.epoch_loop import EpochCounter

    seen = collections.defaultdict(list)

    class Recorder(sb.Brain):
        def compute_forward(self, batch, stage):
            seen[self.epoch].append(list(batch.idx))
            return self.modules.lin(torch.ones(1, 1))

        def compute_objectives(self, predictions, batch, stage):
            return predictions.sum()

        def on_stage_start(self, stage, epoch=None):
            self.epoch = epoch

    data = {f"u{i}": {"spk_id": f"s{i % 4}", "idx": i} for i in range(24)}
    dataset = sb.dataio.dataset.DynamicItemDataset(
        data, output_keys=["id", "idx"]
    )
    sampler = SpeakerBalancedBatchSampler.from_dataset(
        dataset, speakers_per_batch=2, utterances_per_speaker=2, seed=2
    )
    counter = EpochCounter(2)
    brain = Recorder(
        modules={"lin": torch.nn.Linear(1, 1)},
        opt_class=lambda p: torch.optim.SGD(p, lr=0.1),
        run_opts={"device": "cpu", "noprogressbar": True},
        checkpointer=Checkpointer(tmp_path, recoverables={"counter": counter}),
    )
    loader = make_speaker_balanced_loader(dataset, sampler, brain=brain)
    assert "dataloader-TRAIN" in brain.checkpointer.recoverables
    brain.fit(counter, loader)
    for epoch in (1, 2):
        assert seen[epoch] == sampler.global_batches(epoch)
    assert seen[1] != seen[2]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, labels, out):
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        sampler = SpeakerBalancedBatchSampler(labels, 4, 2, seed=1)
        sampler.set_epoch(2)
        gathered = [None] * world
        dist.all_gather_object(gathered, list(sampler))
        if rank == 0:
            torch.save(gathered, out)
    finally:
        dist.destroy_process_group()


def test_reads_world_size_and_rank_from_torch_distributed(tmp_path):
    labels = _labels(UNEVEN)
    out = str(tmp_path / "batches.pt")
    torch.multiprocessing.spawn(
        _ddp_worker, args=(2, _free_port(), labels, out), nprocs=2, join=True
    )
    b0, b1 = torch.load(out)
    assert len(b0) == len(b1) == 5
    assert not {tuple(b) for b in b0} & {tuple(b) for b in b1}
    single = SpeakerBalancedBatchSampler(labels, 4, 2, seed=1)
    assert b0 + b1 != [] and sorted(b0 + b1) == sorted(single.global_batches(2))


def test_random_configurations_keep_the_invariants():
    rng = np.random.default_rng(123)
    for trial in range(20):
        K = int(rng.integers(1, 4))
        P = int(rng.integers(2, 6))
        counts = rng.integers(1, 15, size=int(rng.integers(P + 2, 12))).tolist()
        counts[0] = max(counts[0], K)  # keep enough eligible speakers
        counts[1:P] = [max(c, K) for c in counts[1:P]]
        labels = _labels(counts)
        W = int(rng.integers(1, 3))
        samplers = [
            SpeakerBalancedBatchSampler(
                labels,
                P,
                K,
                seed=trial,
                drop_last=False,
                num_replicas=W,
                rank=r,
            )
            for r in range(W)
        ]
        outs = [list(s) for s in samplers]
        assert len({len(o) for o in outs}) == 1
        for batch in (b for o in outs for b in o):
            _check_batch(batch, labels, P, K)


def test_hyperpyyaml_partial_builds_from_dataset():
    from hyperpyyaml import load_hyperpyyaml

    yaml = """
train_sampler: !name:speechbrain_xmkd.sampling.SpeakerBalancedBatchSampler.from_dataset
    key: spk_id
    speakers_per_batch: 3
    utterances_per_speaker: 2
    seed: 1
"""
    hparams = load_hyperpyyaml(yaml)
    sampler = hparams["train_sampler"](_dynamic_dataset())
    assert (
        isinstance(sampler, SpeakerBalancedBatchSampler) and len(sampler) == 2
    )
