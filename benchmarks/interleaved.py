"""Interleaved step timing shared by the step-overhead benchmarks.

Variants are timed in turn within each repeat, so slow drift of a shared
machine (clock, other processes) hits every variant alike and the ratios
between them stay meaningful.
"""

import statistics
import time

import torch


def sync(device):
    """Waits for queued GPU work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(steps, device, repeats, warmup=2):
    """Median seconds of each ``steps[name]()`` call, timed in interleaved rounds.

    Arguments
    ---------
    steps : dict of str -> callable
        The variants; each call runs one full step.
    device : torch.device
        Where they run (synchronised around every timed call).
    repeats : int
        Timed rounds.
    warmup : int
        Untimed calls of each variant first (allocator, cudnn autotune).

    Returns
    -------
    dict of str -> float
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    sync(device)
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
