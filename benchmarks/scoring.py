#!/usr/bin/env python3
"""Speed of the evaluation protocol: scoring VoxCeleb1-H sized lists, and embedding extraction.

(a) Scoring 552,536 trials (VoxCeleb1-H) from cached crop embeddings,
end to end: map the trial list's utterance names to rows, reduce
``[U, 10, D]`` crop embeddings to mean unit vectors, score every trial
(the mean of its 10 x 10 crop-pair cosines, as one dot product), then EER
and minDCF. Compared with the naive double loop over the 100 crop pairs
of each trial, timed on a subsample and extrapolated.

(b) Embedding extraction with the paper's student (SpeechBrain's ResNet
lobe, channels [32, 64, 128, 256], 40 mel filterbanks): utterances per
second, each utterance being ten 4 s crops (features + network; audio
decoding excluded).

    python benchmarks/scoring.py                    # both, CPU
    python benchmarks/scoring.py --device cuda:0    # extraction on a GPU
    python benchmarks/scoring.py --skip_extraction --utterances 145160 --dim 512
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speechbrain_xmkd.evaluation import speech_embedding_fn, verification_metrics  # noqa: E402
from speechbrain_xmkd.verification import pair_scores, reduce_crops  # noqa: E402

VOX1_H_TRIALS = 552536
VOX1_UTTERANCES = 145160  # VoxCeleb1 (E and H lists draw from all of it)


def fake_trials(n_trials, n_utts, seed=0):
    """A trial list over ``n_utts`` VoxCeleb-style names, half targets."""
    rng = np.random.default_rng(seed)
    names = [f"id{10001 + i // 116}/{'v' * 11}{i % 7}/{i:05d}.wav" for i in range(n_utts)]
    enrol = rng.integers(0, n_utts, n_trials)
    test = rng.integers(0, n_utts, n_trials)
    labels = (rng.random(n_trials) < 0.5).astype(int)
    return names, [(int(y), names[a], names[b]) for y, a, b in zip(labels, enrol, test)]


def bench_scoring(n_trials, n_utts, dim, n_crops, naive_sample):
    names, trials = fake_trials(n_trials, n_utts)
    generator = torch.Generator().manual_seed(0)
    # Stands in for the extractor's output, [U, n_crops, D] (not timed).
    crops = torch.randn(n_utts, n_crops, dim, generator=generator)
    labels_np = np.array([t[0] for t in trials])
    # Make targets score higher so the metrics see a realistic spread.
    print(f"(a) scoring {n_trials:,} trials over {n_utts:,} utterances x {n_crops} crops x {dim} dims")

    start = time.perf_counter()
    index = {name: i for i, name in enumerate(names)}
    enrol = torch.tensor([index[t[1]] for t in trials])
    test = torch.tensor([index[t[2]] for t in trials])
    t_index = time.perf_counter()
    means = reduce_crops(crops)
    t_reduce = time.perf_counter()
    scores = pair_scores(means, means, enrol, test)
    t_score = time.perf_counter()
    # Random embeddings score ~0 whatever the label; shifting the targets
    # gives the metrics a realistic spread (same cost either way).
    shifted = scores.double().numpy() + 1.5 * float(scores.std()) * labels_np
    metrics = verification_metrics(shifted, labels_np)
    end = time.perf_counter()
    ours = end - start
    print(f"    names -> rows {t_index - start:6.2f} s | reduce crops {t_reduce - t_index:6.2f} s | "
          f"score {t_score - t_reduce:6.2f} s | EER+minDCF {end - t_score:6.2f} s")
    print(f"    end to end: {ours:.2f} s  (EER {metrics['eer_percent']:.2f}%, minDCF {metrics['min_dcf']:.3f})")

    # The naive protocol: 100 crop-pair cosines per trial, in a double loop.
    cos = torch.nn.functional.cosine_similarity
    sample = trials[:naive_sample]
    start = time.perf_counter()
    naive = []
    for _, a, b in sample:
        left, right = crops[index[a]], crops[index[b]]
        total = 0.0
        for i in range(n_crops):
            for j in range(n_crops):
                total += float(cos(left[i], right[j], dim=0))
        naive.append(total / (n_crops * n_crops))
    per_trial = (time.perf_counter() - start) / len(sample)
    diff = float(np.abs(np.array(naive) - scores[: len(sample)].numpy()).max())
    full = per_trial * n_trials
    print(f"    naive 10x10 double loop: {1e3 * per_trial:.3f} ms/trial on {len(sample)} trials -> "
          f"{full:,.0f} s for all ({full / 3600:.1f} h); ours is {full / ours:,.0f}x faster; "
          f"max |score difference| {diff:.1e}")


def bench_extraction(device, n_utts, batch_utts, n_crops, crop_seconds, utt_seconds):
    from speechbrain.lobes.features import Fbank
    from speechbrain.lobes.models.ResNet import ResNet
    from speechbrain.processing.features import InputNormalization

    torch.manual_seed(0)
    features = Fbank(n_mels=40).to(device)
    norm = InputNormalization(norm_type="sentence", std_norm=False).to(device)
    model = ResNet(input_size=40, channels=[32, 64, 128, 256], block_sizes=[3, 4, 6, 3],
                   strides=[1, 2, 2, 2], lin_neurons=512).to(device).eval()
    embed = speech_embedding_fn(features, norm, model)
    sr = 16000
    crop = int(crop_seconds * sr)
    utterance = torch.randn(int(utt_seconds * sr)) * 0.1
    starts = np.linspace(0, len(utterance) - crop, n_crops).round().astype(int)
    one = torch.stack([utterance[s : s + crop] for s in starts])
    batch = one.repeat(batch_utts, 1).to(device)
    params = sum(p.numel() for p in model.parameters())
    print(f"(b) extraction: ResNet34 [32,64,128,256] ({params / 1e6:.2f} M parameters), 40 mel, {device}, "
          f"{n_crops} x {crop_seconds:g} s crops per utterance, {batch_utts} utterances per forward, "
          f"{torch.get_num_threads()} threads")
    with torch.no_grad():
        reduce_crops(embed(batch).reshape(batch_utts, n_crops, -1))  # warm-up
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        done = 0
        while done < n_utts:
            reduce_crops(embed(batch).reshape(batch_utts, n_crops, -1))
            done += batch_utts
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    print(f"    {done} utterances in {elapsed:.2f} s: {done / elapsed:.2f} utterances/s "
          f"-> VoxCeleb1-O (4,874 utterances) in {4874 / (done / elapsed) / 60:.1f} min, "
          f"all of VoxCeleb1 ({VOX1_UTTERANCES:,}) in {VOX1_UTTERANCES / (done / elapsed) / 3600:.1f} h")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=VOX1_H_TRIALS)
    parser.add_argument("--utterances", type=int, default=137000, help="utterances in the list (VoxCeleb1-H: ~137k)")
    parser.add_argument("--dim", type=int, default=512, help="embedding width (the yaml's emb_dim)")
    parser.add_argument("--crops", type=int, default=10)
    parser.add_argument("--naive_sample", type=int, default=300, help="trials timed with the double loop")
    parser.add_argument("--device", default="cpu", help="extraction device, e.g. cuda:0")
    parser.add_argument("--extract_utterances", type=int, default=8)
    parser.add_argument("--batch_utterances", type=int, default=4)
    parser.add_argument("--utterance_seconds", type=float, default=8.2, help="VoxCeleb1's mean duration")
    parser.add_argument("--skip_scoring", action="store_true")
    parser.add_argument("--skip_extraction", action="store_true")
    args = parser.parse_args(argv)
    if not args.skip_scoring:
        bench_scoring(args.trials, args.utterances, args.dim, args.crops, args.naive_sample)
    if not args.skip_extraction:
        bench_extraction(args.device, args.extract_utterances, args.batch_utterances, args.crops, 4.0,
                         args.utterance_seconds)


if __name__ == "__main__":
    main()
