"""Speaker verification scoring: the paper's 10-crop protocol, fast.

Protocol (Zhao et al., after Chung et al.): ten evenly spaced 4 s crops per
test utterance, score = mean cosine over the 10 x 10 crop pairs. Since
``mean_ij <a_i/|a_i|, b_j/|b_j|> = <mean_i a_i/|a_i|, mean_j b_j/|b_j|>``,
each utterance is reduced once to the mean of its unit crop embeddings and
a trial costs one dot product: the same score as the double loop, at the
cost of a single cosine. An enrolment model made of several utterances
(CN-Celeb) is the mean of their mean unit vectors: the score is then the
mean cosine over every (enrolment crop, test crop) pair, each utterance
weighted equally.
"""

import logging
from pathlib import Path

import numpy as np
import torch

from .audio import AudioError, audio_info, read_segment, tile

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
    from .trials import read_voxceleb_trials

    return read_voxceleb_trials(trial_file, audio_root or "", check_files=check_files).trials


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


def load_test_audio(path, sample_rate=16000):
    """Reads a whole test utterance; empty, silent or wrong-rate files are errors naming the file.

    Example
    -------
    >>> import tempfile, os, soundfile
    >>> path = os.path.join(tempfile.mkdtemp(), "quiet.wav")
    >>> soundfile.write(path, np.zeros(160, dtype="float32"), 16000)
    >>> load_test_audio(path)
    Traceback (most recent call last):
    ...
    speechbrain_xmkd.audio.AudioError: audio file '...quiet.wav' is silent (all 160 samples are zero)
    """
    frames, _, _ = audio_info(path)
    if frames == 0:
        raise AudioError(f"audio file '{path}' is empty (0 samples)")
    signal = read_segment(path, 0, None, sample_rate)
    if not bool(signal.abs().max() > 0):
        raise AudioError(f"audio file '{path}' is silent (all {signal.shape[0]} samples are zero)")
    return signal


def crops_of(signal, crop_samples, n_crops):
    """``([n_crops, crop_samples] tensor, tiled: bool)`` of a waveform (tiled when shorter than a crop)."""
    tiled = signal.shape[0] < crop_samples
    if tiled:
        signal = tile(signal, crop_samples)
    starts = crop_starts(signal.shape[0], crop_samples, n_crops)
    return torch.stack([signal[s : s + crop_samples] for s in starts]), tiled


def utterance_crops(path, sample_rate, crop_samples, n_crops, transform=None, key=None):
    """Returns ``([n_crops, crop_samples] tensor, tiled: bool)`` for one file.

    ``transform(signal, key)`` (e.g. a :class:`~speechbrain_xmkd.noise.NoisePicker`
    with a fixed ``delta_db``) is applied to the whole utterance first.
    """
    signal = load_test_audio(path, sample_rate)
    if transform is not None:
        signal = transform(signal, key if key is not None else str(path))
    return crops_of(signal, crop_samples, n_crops)


class CropDataset(torch.utils.data.Dataset):
    """The evaluation crops of a list of utterances, one item per utterance.

    Arguments
    ---------
    paths : list of str
        Audio files.
    sample_rate : int
        Expected rate of every file.
    crop_samples : int
        Crop length.
    n_crops : int
        Crops per utterance.
    transform : callable, optional
        ``transform(signal, key) -> signal`` on the whole utterance.
    keys : list of str, optional
        Keys passed to ``transform`` (default: the paths). Relative paths
        keep a seeded transform identical wherever the data lies.
    """

    def __init__(self, paths, sample_rate, crop_samples, n_crops, transform=None, keys=None):
        self.paths = list(paths)
        self.keys = list(keys) if keys is not None else [str(p) for p in self.paths]
        self.sample_rate, self.crop_samples, self.n_crops = sample_rate, crop_samples, n_crops
        self.transform = transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return utterance_crops(
            self.paths[i], self.sample_rate, self.crop_samples, self.n_crops, self.transform, self.keys[i]
        )


def _collate(items):
    return torch.cat([crops for crops, _ in items]), sum(int(tiled) for _, tiled in items)


@torch.no_grad()
def embed_utterances(embed_fn, paths, sample_rate=16000, crop_seconds=4.0, n_crops=10,
                     batch_size=32, device="cpu", progressbar=False, transform=None, keys=None,
                     num_workers=0):
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
    device : str
        Where ``embed_fn`` runs.
    progressbar : bool
        Show a tqdm bar.
    transform : callable, optional
        ``transform(signal, key)`` applied to each whole utterance (test noise).
    keys : list of str, optional
        Keys for ``transform`` (default: the paths).
    num_workers : int
        DataLoader workers reading audio.

    Returns
    -------
    (torch.Tensor, int)
        ``[len(paths), D]`` mean unit vectors (float32, CPU), and how many
        files were shorter than a crop (tiled).

    Example
    -------
    >>> import tempfile, os, soundfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> soundfile.write(path, np.random.default_rng(0).standard_normal(800).astype("float32") / 4, 16000)
    >>> fn = lambda wavs: wavs[:, :3]  # a stand-in "model"
    >>> means, tiled = embed_utterances(fn, [path], crop_seconds=0.01, n_crops=4)
    >>> means.shape, tiled
    (torch.Size([1, 3]), 0)
    """
    crop = int(round(crop_seconds * sample_rate))
    if not paths:
        return torch.zeros(0, 0), 0
    dataset = CropDataset(paths, sample_rate, crop, n_crops, transform, keys)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_collate
    )
    if progressbar:
        from tqdm import tqdm

        loader = tqdm(loader, desc="embedding test utterances")
    means, tiled_count = [], 0
    for batch, tiled in loader:
        tiled_count += tiled
        batch = batch.to(device)
        out = embed_fn(batch).float().reshape(batch.shape[0], -1)
        means.append(reduce_crops(out.reshape(-1, n_crops, out.shape[-1])).cpu())
    return torch.cat(means), tiled_count


def reduce_crops(crop_embeddings, chunk=4096):
    """``[U, n_crops, D]`` crop embeddings -> ``[U, D]`` mean unit vectors.

    Computed as ``(1 / |a_i|)`` weights times the crops (one batched
    matrix product per chunk of utterances), so no normalised copy of the
    crop tensor is ever made: on VoxCeleb1-H sizes (137k x 10 x 512) the
    copy alone is 2.8 GB.

    Example
    -------
    >>> reduce_crops(torch.tensor([[[3.0, 4.0], [0.0, 2.0]]]))
    tensor([[0.3000, 0.9000]])
    """
    count, n_crops, dim = crop_embeddings.shape
    out = torch.empty(count, dim, dtype=crop_embeddings.dtype, device=crop_embeddings.device)
    for first in range(0, count, chunk):
        part = crop_embeddings[first : first + chunk]
        # The same eps as torch.nn.functional.normalize.
        weights = 1.0 / (torch.linalg.vector_norm(part, dim=-1).clamp_min(1e-12) * n_crops)
        out[first : first + chunk] = torch.bmm(weights.unsqueeze(1), part).squeeze(1)
    return out


def enrol_vectors(trial_set, index, embeddings):
    """``[models, D]`` enrolment vectors (mean of the utterances' mean unit vectors) and ``model -> row``."""
    models = sorted(trial_set.enrol)
    rows, owner = [], []
    for m, model in enumerate(models):
        for utterance in trial_set.enrol[model]:
            rows.append(index[utterance])
            owner.append(m)
    owner = torch.tensor(owner)
    sums = torch.zeros(len(models), embeddings.shape[1], dtype=embeddings.dtype)
    sums.index_add_(0, owner, embeddings[torch.tensor(rows)])
    counts = torch.bincount(owner, minlength=len(models)).to(embeddings.dtype)
    return sums / counts[:, None], {model: m for m, model in enumerate(models)}


def pair_scores(left, right, left_rows, right_rows, chunk=8192):
    """``<left[i], right[j]>`` for each pair of rows, chunked to bound memory.

    Example
    -------
    >>> a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> pair_scores(a, a, torch.tensor([0, 0]), torch.tensor([0, 1])).tolist()
    [1.0, 0.0]
    """
    out = torch.empty(len(left_rows), dtype=left.dtype)
    for first in range(0, len(left_rows), chunk):
        i = left_rows[first : first + chunk]
        j = right_rows[first : first + chunk]
        out[first : first + chunk] = (left[i] * right[j]).sum(dim=1)
    return out


def score_trial_set(trial_set, enrol_index, enrol_embeddings, test_index, test_embeddings):
    """Scores every trial of a :class:`~speechbrain_xmkd.trials.TrialSet`.

    Arguments
    ---------
    trial_set : TrialSet
        The trials and enrolment models.
    enrol_index, enrol_embeddings : dict, torch.Tensor
        ``utterance -> row`` and ``[U, D]`` mean unit vectors for the
        enrolment utterances (clean).
    test_index, test_embeddings : dict, torch.Tensor
        The same for the test utterances (clean or noisy).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Scores (float64) and labels, in trial order.
    """
    models, model_row = enrol_vectors(trial_set, enrol_index, enrol_embeddings)
    left = torch.tensor([model_row[t[1]] for t in trial_set.trials])
    right = torch.tensor([test_index[t[2]] for t in trial_set.trials])
    scores = pair_scores(models, test_embeddings, left, right).double().numpy()
    labels = np.array([t[0] for t in trial_set.trials])
    return scores, labels


def score_trials(trials, index, embeddings):
    """Scores ``(label, enrol, test)`` trials from per-utterance mean unit vectors.

    Returns
    -------
    (np.ndarray, np.ndarray)
        Scores and labels, in trial order.
    """
    enrol = torch.tensor([index[t[1]] for t in trials])
    test = torch.tensor([index[t[2]] for t in trials])
    scores = pair_scores(embeddings, embeddings, enrol, test).numpy()
    labels = np.array([t[0] for t in trials])
    return scores, labels


def write_scores(path, trials, scores):
    """Writes ``enrol test label score`` lines (label 1 = same speaker)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        out.writelines(f"{enrol} {test} {label} {score:.6f}\n" for (label, enrol, test), score in zip(trials, scores))
    tmp.replace(path)


def read_scores(path):
    """Reads a scores file back: ``(labels, scores)`` numpy arrays.

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "s.txt")
    >>> write_scores(path, [(1, "a", "b"), (0, "a", "c")], [0.5, -0.25])
    >>> read_scores(path)
    (array([1, 0]), array([ 0.5 , -0.25]))
    """
    labels, scores = [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if len(fields) != 4:
                raise ValueError(f"{path}, line {number}: expected 'enrol test label score', got {line.strip()!r}")
            labels.append(int(fields[2]))
            scores.append(float(fields[3]))
    return np.array(labels), np.array(scores)


def evaluate_trials(brain, trial_file, audio_root, output_folder, sample_rate=16000,
                    crop_seconds=4.0, n_crops=10, batch_size=32, name="trials", checkpoint=None):
    """Embeds, scores and measures one trial list with a trained speaker brain.

    Writes ``<output_folder>/scores/<name>_clean.txt`` and merges
    ``{name: {"clean": {...}}}`` into ``<output_folder>/results.json``; with
    ``checkpoint`` (the loaded SpeechBrain ``Checkpoint``) the embeddings
    are cached under ``<output_folder>/embeddings/<checkpoint name>/``
    where ``evaluate.py`` finds them.

    Returns
    -------
    dict
        ``trials``, ``eer`` (fraction), ``eer_percent``, ``eer_threshold``,
        ``min_dcf`` (normalised, p_target 0.01), ``tiled`` (utterances
        shorter than a crop), ``checkpoint``.
    """
    from .evaluation import SpeakerEvaluator, speech_embedding_fn
    from .trials import read_voxceleb_trials

    trial_set = read_voxceleb_trials(trial_file, audio_root, name)
    brain.modules.eval()
    evaluator = SpeakerEvaluator(
        speech_embedding_fn(brain.modules.compute_features, brain.modules.mean_var_norm,
                            brain.modules.embedding_model),
        output_folder,
        checkpoint=checkpoint,
        sample_rate=sample_rate,
        crop_seconds=crop_seconds,
        n_crops=n_crops,
        batch_size=batch_size,
        device=brain.device,
        fingerprint_modules=[brain.modules.compute_features, brain.modules.mean_var_norm],
    )
    results = evaluator.evaluate(trial_set)["clean"]
    evaluator.update_results({name: {"clean": results}})
    return results
