"""Two real gloo processes: the quality statistics stay in sync across ranks,
also when one rank's batch has no usable teacher row (no deadlock)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from speechbrain_xmkd import Distiller, ProjectionHead, QualityWeighter
from speechbrain_xmkd.sampling import SpeakerBalancedBatchSampler


def _worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(rank)
    distiller = Distiller(
        "soft_feature",
        projection=ProjectionHead(teacher_dim=6, student_dim=4, num_layers=1),
        weighter=QualityWeighter(),
    )
    norms = []
    for step in range(3):
        teacher = torch.randn(5, 6) * (1 + rank + step)
        norms.append(torch.linalg.vector_norm(teacher, dim=1))
        # Rank 0 has no usable teacher row at step 1.
        mask = torch.zeros(5, dtype=torch.bool) if (rank == 0 and step == 1) else None
        terms = distiller(torch.randn(5, 4), teacher, mask=mask)
        sum(terms.values()).backward()
    labels = [f"s{i % 6}" for i in range(60)]
    sampler = SpeakerBalancedBatchSampler(labels, speakers_per_batch=3, utterances_per_speaker=2, seed=1)
    batches = [list(b) for b in sampler]
    torch.save({"mean": distiller.weighter.running_mean, "std": distiller.weighter.running_std,
                "norms": torch.stack(norms), "batches": batches}, f"{out_file}.{rank}")
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_quality_statistics_synchronised_and_batches_disjoint(tmp_path):
    init_file, out_file = tmp_path / "init", tmp_path / "out"
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_worker, args=(2, str(init_file), str(out_file)), nprocs=2, join=True)
    r0, r1 = (torch.load(f"{out_file}.{r}", weights_only=True) for r in (0, 1))
    assert torch.equal(r0["mean"], r1["mean"]) and torch.equal(r0["std"], r1["std"])
    # Independent recomputation of the synchronised moving average (momentum 0.1):
    # step 1 uses only rank 1's rows (rank 0 had none).
    pooled = [torch.cat([r0["norms"][0], r1["norms"][0]]), r1["norms"][1],
              torch.cat([r0["norms"][2], r1["norms"][2]])]
    mean = pooled[0].mean()
    for batch in pooled[1:]:
        mean = 0.9 * mean + 0.1 * batch.mean()
    assert r0["mean"][0].item() == pytest.approx(mean.item(), rel=1e-5)
    # The sampler deals distinct whole batches to the two ranks.
    flat0 = {tuple(b) for b in r0["batches"]}
    flat1 = {tuple(b) for b in r1["batches"]}
    assert flat0 and len(r0["batches"]) == len(r1["batches"]) and not flat0 & flat1
