"""Speaker verification scoring: the paper's 10-crop protocol, fast.

Protocol (Zhao et al., after Chung et al.): ten evenly spaced 4 s crops per
test utterance, score = mean cosine over the 10 x 10 crop pairs. Since
``mean_ij <a_i/|a_i|, b_j/|b_j|> = <mean_i a_i/|a_i|, mean_j b_j/|b_j|>``,
each utterance is reduced once to the mean of its unit crop embeddings and
a trial costs one dot product: the same score as the double loop, at the
cost of a single cosine.
"""

import json
import logging
from pathlib import Path

import numpy as np
import torch

from .audio import read_segment, tile
from .metrics import eer, min_dcf

logger = logging.getLogger(__name__)


def read_trials(trial_file, audio_root=None, check_files=True):
    """Parses a VoxCeleb trial list: ``label enrol test`` per line.

    Arguments
    ---------
    trial_file : str
        E.g. ``veri_test2.txt``: ``1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav``.
    audio_root : str, optional
        Folder the utterance paths are relative to (VoxCeleb1's ``wav/``).
    check_files : bool
        Raise if a named file does not exist.

    Returns
    -------
    list of (int, str, str)
        ``(label, enrol, test)`` with label 1 = same speaker.

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "trials.txt")
    >>> _ = open(path, "w").write("1 a/x/1.wav a/y/2.wav\\n0 a/x/1.wav b/z/3.wav\\n")
    >>> read_trials(path, check_files=False)
    [(1, 'a/x/1.wav', 'a/y/2.wav'), (0, 'a/x/1.wav', 'b/z/3.wav')]
    """
    trials = []
    with open(trial_file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 3 or fields[0] not in ("0", "1"):
                raise ValueError(
                    f"{trial_file}, line {number}: expected 'label enrol test' with label 0 or 1, "
                    f"got {line.strip()!r}"
                )
            for utterance in fields[1:]:
                if check_files:
                    path = Path(audio_root or "") / utterance
                    if not path.is_file():
                        raise FileNotFoundError(
                            f"{trial_file}, line {number}: audio file '{path}' does not exist"
                        )
            trials.append((int(fields[0]), fields[1], fields[2]))
    if not trials:
        raise ValueError(f"{trial_file}: no trials")
    return trials


def crop_starts(num_samples, crop_samples, n_crops):
    """Evenly spaced crop starts covering the utterance (first at 0, last at the end).

    Example
    -------
    >>> crop_starts(100, 40, 4)
    [0, 20, 40, 60]
    >>> crop_starts(30, 40, 3)  # shorter than a crop: tiled, one position
    [0, 0, 0]
    """
    if num_samples <= crop_samples:
        return [0] * n_crops
    return [int(round(s)) for s in np.linspace(0, num_samples - crop_samples, n_crops)]


def utterance_crops(path, sample_rate, crop_samples, n_crops):
    """Returns ``([n_crops, crop_samples] tensor, tiled: bool)`` for one file."""
    signal = read_segment(path, 0, None, sample_rate)
    tiled = signal.shape[0] < crop_samples
    if tiled:
        signal = tile(signal, crop_samples)
    starts = crop_starts(signal.shape[0], crop_samples, n_crops)
    return torch.stack([signal[s : s + crop_samples] for s in starts]), tiled


@torch.no_grad()
def embed_utterances(embed_fn, paths, sample_rate=16000, crop_seconds=4.0, n_crops=10,
                     batch_size=32, device="cpu", progressbar=False):
    """Mean of the unit crop embeddings of each utterance, computed once each.

    Arguments
    ---------
    embed_fn : callable
        ``wavs [N, samples] -> embeddings [N, D]`` (or ``[N, 1, D]``), in eval mode.
    paths : list of str
        Audio files (each embedded once, however many trials name it).
    sample_rate, crop_seconds, n_crops : see the module docstring.
    batch_size : int
        Utterances per forward (each contributes ``n_crops`` rows).

    Returns
    -------
    (torch.Tensor, int)
        ``[len(paths), D]`` mean unit vectors, and how many files were tiled.
    """
    crop = int(round(crop_seconds * sample_rate))
    means, tiled_count = [], 0
    iterator = range(0, len(paths), batch_size)
    if progressbar:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="embedding test utterances")
    for first in iterator:
        crops = []
        for path in paths[first : first + batch_size]:
            wav_crops, tiled = utterance_crops(path, sample_rate, crop, n_crops)
            crops.append(wav_crops)
            tiled_count += int(tiled)
        batch = torch.cat(crops).to(device)
        out = embed_fn(batch).float().reshape(batch.shape[0], -1)
        out = torch.nn.functional.normalize(out, dim=1)
        means.append(out.reshape(len(crops), n_crops, -1).mean(dim=1).cpu())
    return torch.cat(means), tiled_count


def score_trials(trials, index, embeddings):
    """Scores ``(label, enrol, test)`` trials from per-utterance mean unit vectors.

    Returns
    -------
    (np.ndarray, np.ndarray)
        Scores and labels, in trial order.
    """
    enrol = torch.tensor([index[t[1]] for t in trials])
    test = torch.tensor([index[t[2]] for t in trials])
    scores = (embeddings[enrol] * embeddings[test]).sum(dim=1).numpy()
    labels = np.array([t[0] for t in trials])
    return scores, labels


def write_scores(path, trials, scores):
    """Writes ``enrol test label score`` lines (label 1 = same speaker)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        for (label, enrol, test), score in zip(trials, scores):
            out.write(f"{enrol} {test} {label} {score:.6f}\n")


def evaluate_trials(brain, trial_file, audio_root, output_folder, sample_rate=16000,
                    crop_seconds=4.0, n_crops=10, batch_size=32, name="trials"):
    """Embeds, scores and measures one trial list with a trained speaker brain.

    Writes ``<output_folder>/scores/<name>_clean.txt`` and merges
    ``{name: {"clean": {...}}}`` into ``<output_folder>/results.json``.

    Returns
    -------
    dict
        ``trials``, ``eer`` (fraction), ``eer_threshold``, ``min_dcf``
        (normalised, p_target 0.01), ``tiled`` (utterances shorter than a crop).
    """
    trials = read_trials(trial_file, audio_root)
    utterances = sorted({u for t in trials for u in t[1:]})
    index = {u: i for i, u in enumerate(utterances)}
    brain.modules.eval()

    def embed_fn(wavs):
        lens = torch.ones(wavs.shape[0], device=wavs.device)
        feats = brain.modules.compute_features(wavs)
        feats = brain.modules.mean_var_norm(feats, lens)
        return brain.modules.embedding_model(feats, lens)

    paths = [str(Path(audio_root) / u) for u in utterances]
    embeddings, tiled = embed_utterances(
        embed_fn, paths, sample_rate, crop_seconds, n_crops, batch_size, brain.device
    )
    scores, labels = score_trials(trials, index, embeddings)
    eer_value, eer_threshold = eer(scores[labels == 1], scores[labels == 0])
    dcf_value, _ = min_dcf(scores[labels == 1], scores[labels == 0])
    write_scores(Path(output_folder) / "scores" / f"{name}_clean.txt", trials, scores)
    results = {
        "trials": len(trials),
        "eer": eer_value,
        "eer_threshold": eer_threshold,
        "min_dcf": dcf_value,
        "tiled": tiled,
    }
    results_file = Path(output_folder) / "results.json"
    merged = json.loads(results_file.read_text()) if results_file.exists() else {}
    merged.setdefault(name, {})["clean"] = results
    results_file.write_text(json.dumps(merged, indent=2))
    logger.info("%s: EER %.2f%%, minDCF %.4f over %d trials", name, 100 * eer_value, dcf_value, len(trials))
    return results
