#!/usr/bin/env python3
"""Forward+backward cost of each distillation loss next to the task loss.

Same batch for every row: 200 student and 200 teacher embeddings of width
256, labels over 5,994 speakers (VoxCeleb2 dev). The reference row is the
student's own AAM-softmax task loss (SpeechBrain's cosine ``Classifier`` +
``LogSoftmaxWrapper(AdditiveAngularMargin)``), forward and backward. Each
ratio is measured against that reference in the same run.

    python benchmarks/loss_overhead.py [--device cuda:0] [--repeats 30]
"""

import argparse
import statistics
import time

import torch
from speechbrain.lobes.models.ECAPA_TDNN import Classifier
from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper

from speechbrain_xmkd import Distiller, ProjectionHead, QualityWeighter
from speechbrain_xmkd.distill import build_loss


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(step, device, repeats, warmup=3):
    """Median seconds of ``step()`` (which runs forward and backward)."""
    for _ in range(warmup):
        step()
    sync(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--classes", type=int, default=5994)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    b, d = args.batch, args.dim
    student = torch.randn(b, d, device=device, requires_grad=True)
    teacher = torch.randn(b, d, device=device, requires_grad=True)
    labels = torch.randint(0, args.classes, (b,), device=device)
    classifier = Classifier(input_size=d, out_neurons=args.classes).to(device)
    aam = LogSoftmaxWrapper(AdditiveAngularMargin(margin=0.2, scale=30))

    def task_step():
        aam(classifier(student), labels.unsqueeze(1)).backward()

    losses = {
        "soft_feature (cosine, m=0.866)": build_loss("soft_feature", distance="cosine", margin=0.866),
        "soft_feature (angle, m=30)": build_loss("soft_feature", distance="angle", margin=30.0),
        "soft_feature (squared l2)": build_loss("soft_feature", distance="squared_l2", margin=0.09),
        "shared_classifier (AAM, beta=0)": build_loss(
            "shared_classifier", classifier=classifier, margin=AdditiveAngularMargin(0.2, 30)
        ),
        "kd (T=4, shared head)": build_loss("kd", temperature=4.0, classifier=classifier, logit_scale=30.0),
        "fitnet": build_loss("fitnet", student_dim=d, teacher_dim=d),
        "pkt": build_loss("pkt"),
        "sp": build_loss("sp"),
        "ickd": build_loss("ickd", student_channels=d, teacher_channels=d),
        "ccl": build_loss("ccl", dim=d, num_classes=args.classes, classifier=classifier),
        "clip": build_loss("clip"),
    }
    distiller = Distiller(
        build_loss("soft_feature", distance="cosine", margin=0.866),
        projection=ProjectionHead(teacher_dim=512, student_dim=d),
        weighter=QualityWeighter(),
    ).to(device)
    raw_teacher = torch.randn(b, 512, device=device)

    def loss_step(loss):
        def step():
            loss.to(device)
            result = loss(student, teacher, labels)
            if isinstance(result, dict):
                result = sum(v.mean() for v in result.values())
            result.mean().backward()

        return step

    def distiller_step():
        sum(distiller(student, raw_teacher, labels).values()).backward()

    print(f"device {device}, batch {b} x {d}, {args.classes} classes, median of {args.repeats}")
    reference = time_step(task_step, device, args.repeats)
    rows = [("AAM-softmax task loss (reference)", reference)]
    for name, loss in losses.items():
        rows.append((name, time_step(loss_step(loss.to(device)), device, args.repeats)))
    rows.append(
        ("ours: projection 512->256 + quality + soft_feature", time_step(distiller_step, device, args.repeats))
    )

    width = max(len(name) for name, _ in rows)
    print(f"{'loss'.ljust(width)}  {'fwd+bwd ms':>10}  {'x task':>7}")
    for name, seconds in rows:
        print(f"{name.ljust(width)}  {1000 * seconds:10.3f}  {seconds / reference:7.2f}")


if __name__ == "__main__":
    main()
