#!/usr/bin/env python3
"""Cost of distillation per training step, and whether the loader keeps up.

Part 1, one run, same student, same batch, interleaved timing:
  plain      the student alone (AAM-softmax task loss)
  cached     + projection head, soft feature loss, quality weights, with the
             teacher embeddings E_T read from the cache (index_select)
  no cache   the same, but the frozen face teacher (IR-50, 112x112 faces)
             runs on every batch, as code without a cache would do
Each step is forward + backward + Adam step on the whole model. The target
is cached/plain <= 1.05.

Part 2: batches/s of the real training loader (train.py's pipelines on the
embedded corpus: 2 s random crops + cached E_T, speaker-balanced batches)
against training steps/s of the same student at the same batch size.

    python benchmarks/step_overhead.py [--device cuda:0] [--batch 200] [--student resnet34_half]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.ECAPA_TDNN import Classifier
from speechbrain.lobes.models.ResNet import ResNet
from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper
from speechbrain.processing.features import InputNormalization

from speechbrain_xmkd import Distiller, ProjectionHead, QualityWeighter
from speechbrain_xmkd.distill import SoftFeatureLoss
from speechbrain_xmkd.teachers import IR50, FrozenTeacher
from interleaved import time_interleaved  # noqa: E402  (benchmarks/interleaved.py)

ROOT = Path(__file__).resolve().parents[1]


def build_student(width, classes, device):
    channels = {"half": [32, 64, 128, 256], "quarter": [16, 32, 64, 128]}[width]
    student = ResNet(input_size=40, channels=channels, block_sizes=[3, 4, 6, 3], strides=[1, 2, 2, 2], lin_neurons=512)
    return student.to(device), Classifier(input_size=512, out_neurons=classes).to(device)



def part1(args, device):
    torch.manual_seed(0)
    fbank, norm = Fbank(n_mels=40).to(device), InputNormalization(norm_type="sentence", std_norm=False).to(device)
    student, classifier = build_student(args.width, args.classes, device)
    aam = LogSoftmaxWrapper(AdditiveAngularMargin(margin=0.2, scale=30))
    plain = Distiller(None, classifier=classifier, task_loss=aam).to(device)
    ours = Distiller(
        SoftFeatureLoss(distance="cosine", margin=0.866),
        projection=ProjectionHead(teacher_dim=512, student_dim=512),
        weighter=QualityWeighter(),
        classifier=classifier,
        task_loss=aam,
    ).to(device)
    teacher = FrozenTeacher(IR50()).to(device)
    cache = torch.randn(5000, 512, device=device)  # stands for the on-disk cache, loaded once

    wavs = torch.randn(args.batch, int(2.0 * 16000), device=device)
    labels = torch.randint(0, args.classes, (args.batch, 1), device=device)
    faces = torch.randn(args.batch, 3, 112, 112, device=device)
    rows = torch.randint(0, cache.shape[0], (args.batch,), device=device)
    lens = torch.ones(args.batch, device=device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]

    def make_step(distiller, teacher_source):
        params = list(student.parameters()) + list(distiller.parameters())
        optimizer = torch.optim.Adam(params, lr=1e-4)

        def step():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                feats = norm(fbank(wavs), lens)
                emb = student(feats, lens)
                teacher_emb = teacher_source()
                loss = sum(distiller(emb, teacher_emb, labels).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    steps = {
        "plain": make_step(plain, lambda: None),
        "cached": make_step(ours, lambda: cache.index_select(0, rows)),
        "no cache": make_step(ours, lambda: teacher(faces)),
    }
    medians = time_interleaved(steps, device, args.repeats)
    print(f"\nPart 1: ResNet34-{args.width} student, batch {args.batch} x 2 s, {args.classes} speakers, "
          f"{args.precision}, {device}, median of {args.repeats}")
    print(f"{'step':10} {'ms/step':>10} {'x plain':>8}")
    for name, seconds in medians.items():
        print(f"{name:10} {1000 * seconds:10.1f} {seconds / medians['plain']:8.3f}")
    return medians["cached"]


def part2(args, device, train_step_seconds):
    sys.path.insert(0, str(ROOT / "recipes" / "VoxCeleb"))
    from synthetic_prepare import prepare_synthetic
    from train import dataio_prep

    from speechbrain_xmkd.sampling import SpeakerBalancedBatchSampler
    from speechbrain_xmkd.teachers import TeacherEmbeddingCache

    folder = Path(args.corpus or tempfile.mkdtemp(prefix="xmkd_bench_"))
    prepare_synthetic(str(folder), str(folder / "prep"), n_train_speakers=40, n_test_speakers=4,
                      sessions_per_speaker=4, utts_per_session=3, random_segment=True)
    import csv

    faces = sorted({r["face"].replace("$data_root", str(folder))
                    for r in csv.DictReader(open(folder / "prep" / "train.csv"))} |
                   {r["face"].replace("$data_root", str(folder))
                    for r in csv.DictReader(open(folder / "prep" / "dev.csv"))})
    cache = TeacherEmbeddingCache(torch.randn(len(faces), 512), {f: i for i, f in enumerate(faces)})
    hparams = {
        "data_folder": str(folder), "sample_rate": 16000, "sentence_len": 2.0,
        "train_annotation": str(folder / "prep" / "train.csv"),
        "valid_annotation": str(folder / "prep" / "dev.csv"),
        "save_folder": str(folder / "save"), "out_n_neurons": 40,
    }
    Path(hparams["save_folder"]).mkdir(exist_ok=True)
    train_data, _, _ = dataio_prep(hparams, cache)
    speakers = min(20, args.batch // 2)
    sampler = SpeakerBalancedBatchSampler.from_dataset(train_data, key="spk_id", speakers_per_batch=speakers,
                                                       utterances_per_speaker=2, seed=1)
    from speechbrain.dataio.batch import PaddedBatch

    loader = torch.utils.data.DataLoader(train_data, batch_sampler=sampler, collate_fn=PaddedBatch,
                                         num_workers=args.num_workers,
                                         persistent_workers=args.num_workers > 0)
    for _ in loader:  # warm-up epoch: worker start-up is a one-off cost of a run
        pass
    batches, start = 0, time.perf_counter()
    for epoch in range(1, args.loader_epochs + 1):
        sampler.set_epoch(epoch)
        for _ in loader:
            batches += 1
    seconds = time.perf_counter() - start
    per_batch = seconds / batches
    # Training at this loader batch size costs about (batch/args.batch) of a full step.
    step_at_size = train_step_seconds * (2 * speakers) / args.batch
    print(f"\nPart 2: loader on the embedded corpus, {2 * speakers} utterances/batch "
          f"(2 s crops + cached E_T), {args.num_workers} workers")
    print(f"loader alone        {1 / per_batch:8.1f} batches/s  ({1000 * per_batch:.1f} ms/batch)")
    print(f"training (cached)   {1 / step_at_size:8.1f} steps/s    (part 1, scaled to this batch size)")
    print(f"loader / training   {step_at_size / per_batch:8.1f}x  (>1: the loader keeps the step fed)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None, help="default 200 on CUDA, 16 on CPU")
    parser.add_argument("--width", default=None, choices=["half", "quarter"], help="default half on CUDA, quarter on CPU")
    parser.add_argument("--classes", type=int, default=5994)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--loader_epochs", type=int, default=5)
    parser.add_argument("--corpus", default=None, help="reuse a generated corpus folder")
    parser.add_argument("--no_loader", action="store_true", help="skip part 2")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.batch = args.batch or (200 if cuda else 16)
    args.width = args.width or ("half" if cuda else "quarter")
    args.repeats = args.repeats or (30 if cuda else 8)
    if cuda:
        torch.backends.cudnn.benchmark = True
    step = part1(args, device)
    if not args.no_loader:
        part2(args, device, step)


if __name__ == "__main__":
    main()
