#!/usr/bin/env python3
"""Runs the distillation objects of a yaml for a few steps on random tensors.

A smoke run of the library, with no data: identities are random centroids
seen through two noisy "modalities"; the teacher sees one through a frozen
layer, the student learns from the other and from the teacher. Prints the
named loss terms as training goes.

Usage::

    python recipes/Demo/demo.py recipes/Demo/hparams/demo.yaml [--steps 100] [--lr 0.01]
"""

import sys

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml


def make_batch(hparams, centroids, generator):
    """Draws one batch: labels, student inputs, teacher inputs."""
    labels = torch.randint(0, hparams["num_classes"], (hparams["batch_size"],), generator=generator)
    speech = centroids["speech"][labels] + torch.randn(
        len(labels), hparams["input_dim"], generator=generator
    )
    face = centroids["face"][labels] + 0.5 * torch.randn(
        len(labels), hparams["face_dim"], generator=generator
    )
    return labels, speech, face


def main(argv):
    hparams_file, _, overrides = sb.parse_arguments(argv)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)

    teacher = hparams["teacher"].eval()
    teacher.requires_grad_(False)
    distiller = hparams["distiller"]
    student = hparams["student"]
    optimizer = torch.optim.Adam(
        list(student.parameters()) + list(distiller.parameters()), lr=hparams["lr"]
    )
    generator = torch.Generator().manual_seed(hparams["seed"])
    centroids = {
        "speech": 2.0 * torch.randn(hparams["num_classes"], hparams["input_dim"], generator=generator),
        "face": 2.0 * torch.randn(hparams["num_classes"], hparams["face_dim"], generator=generator),
    }

    print(f"distiller:\n{distiller}\n")
    for step in range(1, hparams["steps"] + 1):
        labels, speech, face = make_batch(hparams, centroids, generator)
        with torch.no_grad():
            teacher_embedding = teacher(face)
        terms = distiller(student(speech), teacher_embedding, labels)
        loss = sum(terms.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 1 or step % hparams["log_every"] == 0:
            named = ", ".join(f"{name}: {value.item():.4f}" for name, value in terms.items())
            print(f"step {step:4d}  loss: {loss.item():.4f}  ({named})")

    distiller.eval()
    student.eval()
    with torch.no_grad():
        labels, speech, _ = make_batch(hparams, centroids, generator)
        logits = hparams["classifier"](student(speech)).squeeze(1)
        accuracy = (logits.argmax(dim=1) == labels).float().mean().item()
    print(f"\nstudent accuracy on a fresh batch: {accuracy:.1%} (chance {1 / hparams['num_classes']:.1%})")
    return accuracy


if __name__ == "__main__":
    main(sys.argv[1:])
