"""Times speechbrain_xmkd.metrics against SpeechBrain's EER / minDCF.

(a) 37,720 synthetic trials (VoxCeleb1-O size): ours (eer + min_dcf, best of
several runs) against SpeechBrain's ``EER`` (one run, tens of seconds) and,
when it fits in memory, its ``minDCF``; the values must agree.
(b) 552,536 trials (VoxCeleb1-H size): ours alone.

Run from the repository root::

    python benchmarks/metrics.py
"""

import time

import torch
from speechbrain.utils.metric_stats import EER, minDCF

from speechbrain_xmkd.metrics import eer, min_dcf

VOX1_O = 37_720
VOX1_H = 552_536
REPEATS = 5


def synthetic_trials(n_trials, seed=0):
    """Half target ~ N(0.6, 0.15), half non-target ~ N(0.1, 0.15), float32."""
    g = torch.Generator().manual_seed(seed)
    n_pos = n_trials // 2
    pos = 0.6 + 0.15 * torch.randn(n_pos, generator=g)
    neg = 0.1 + 0.15 * torch.randn(n_trials - n_pos, generator=g)
    return pos, neg


def ours(pos, neg):
    """Our EER and minDCF on one trial list."""
    return eer(pos, neg), min_dcf(pos, neg)


def best_time(fn, *args, repeats=REPEATS):
    """Best wall-clock seconds of ``repeats`` calls, and the last result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return min(times), result


def once(fn, *args):
    """Wall-clock seconds of one call, and its result."""
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def available_memory_bytes():
    """MemAvailable from /proc/meminfo (Linux), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def speechbrain_min_dcf_bytes(pos, neg):
    """Peak memory of SpeechBrain's minDCF: a float32 thresholds x scores copy
    of each score set plus the bool comparison matrix, one set at a time."""
    n_thresholds = 2 * len(torch.unique(torch.cat([pos, neg]))) - 1
    widest = max(len(pos), len(neg))
    return n_thresholds * widest * (4 + 1)


def main():
    """Runs both benchmarks and prints a table."""
    rows = []
    pos, neg = synthetic_trials(VOX1_O)
    ours(pos, neg)  # warm-up: imports, allocator
    t_ours, ((our_eer, our_th), (our_dcf, _)) = best_time(ours, pos, neg)
    t_sb_eer, (sb_eer, sb_th) = once(EER, pos, neg)
    if abs(our_eer - sb_eer) > 1e-6 or our_th != sb_th:
        raise SystemExit(
            f"EER disagrees: ours {our_eer} at {our_th}, "
            f"SpeechBrain {sb_eer} at {sb_th}"
        )
    o_size = f"Vox1-O {VOX1_O:,}"
    rows.append((o_size, "ours eer+min_dcf", t_ours, result_text(our_eer, our_dcf)))
    rows.append(("", "SpeechBrain EER", t_sb_eer, result_text(sb_eer)))

    need = speechbrain_min_dcf_bytes(pos, neg)
    free = available_memory_bytes()
    if free is not None and need < 0.5 * free:
        t_sb_dcf, (sb_dcf, _) = once(minDCF, pos, neg)
        sb_dcf /= min(0.01, 0.99)  # normalised: defaults p_target=0.01, costs 1
        if abs(our_dcf - sb_dcf) > 1e-5:
            raise SystemExit(f"minDCF disagrees: ours {our_dcf}, SpeechBrain {sb_dcf}")
        note = f"  (peak ~{need / 2**30:.1f} GiB)"
        result = result_text(None, sb_dcf) + note
        rows.append(("", "SpeechBrain minDCF", t_sb_dcf, result))
    else:
        have = "unknown" if free is None else f"{free / 2**30:.1f} GiB available"
        note = f"skipped: needs ~{need / 2**30:.1f} GiB, {have}"
        rows.append(("", "SpeechBrain minDCF", None, note))

    pos, neg = synthetic_trials(VOX1_H, seed=1)
    t_h, ((h_eer, _), (h_dcf, _)) = best_time(ours, pos, neg, repeats=3)
    h_size = f"Vox1-H {VOX1_H:,}"
    rows.append((h_size, "ours eer+min_dcf", t_h, result_text(h_eer, h_dcf)))

    print(f"{'trials':<16} {'method':<20} {'seconds':>9}  result")
    for trials, method, seconds, result in rows:
        shown = "-" if seconds is None else f"{seconds:.4f}"
        print(f"{trials:<16} {method:<20} {shown:>9}  {result}")
    speed_up = t_sb_eer / t_ours
    print(f"speed-up over SpeechBrain EER (Vox1-O): {speed_up:,.0f}x (target >= 500x)")
    print(f"Vox1-H eer+min_dcf: {t_h:.3f} s (target < 1 s)")


def result_text(eer_value=None, dcf_value=None):
    """EER in % and normalised minDCF, as printed in the table."""
    parts = []
    if eer_value is not None:
        parts.append(f"EER {100 * eer_value:.4f}%")
    if dcf_value is not None:
        parts.append(f"minDCF {dcf_value:.4f}")
    return "  ".join(parts)


if __name__ == "__main__":
    main()
