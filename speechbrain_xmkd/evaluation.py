"""Speaker evaluation of a trained checkpoint: clean and noisy trial sets, cached.

:class:`SpeakerEvaluator` embeds every utterance of a
:class:`~speechbrain_xmkd.trials.TrialSet` once (ten 4 s crops, mean of
the unit crop embeddings, see :mod:`speechbrain_xmkd.verification`),
scores the trials, and writes ``scores/<set>_<condition>.txt``
(``enrol test label score``) and the metrics. Conditions are ``clean``
and ``noise<delta_db>`` (Eq. 13: noise mixed into each TEST utterance
at ``delta_db = db_audio - db_noise``; the enrolment side stays clean, the
common practice for noisy-test evaluations; the paper says "each test
audio sample", which does not settle whether enrolment utterances were
noised too).

Embeddings are cached per checkpoint and condition in
``<output>/embeddings/<checkpoint>/<set>_<condition>.pt`` with an index
``.json`` holding a key over the checkpoint (``CKPT.yaml`` and a hash of
its weight files), the protocol (rate, crops, feature settings) and the
condition (noise files, seed, ``delta_db``). A key that does not match is
logged and the embeddings are rebuilt: an old file is never silently used.

Authors
 * speechbrain_xmkd contributors
"""

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from .metrics import eer, min_dcf
from .verification import embed_utterances, score_trial_set, write_scores

logger = logging.getLogger(__name__)

__all__ = [
    "SpeakerEvaluator",
    "EpochVerifier",
    "EmbeddingCache",
    "checkpoint_fingerprint",
    "module_signature",
    "speech_embedding_fn",
    "verification_metrics",
    "condition_name",
    "merge_results",
]

CACHE_FORMAT = 1
P_TARGET = 0.01


def speech_embedding_fn(compute_features, mean_var_norm, embedding_model):
    """``wavs [N, samples] -> embeddings`` through fbank, sentence normalisation and the student.

    Example
    -------
    >>> fn = speech_embedding_fn(lambda w: w[:, :, None], lambda f, l: f, lambda f, l: f.mean(1))
    >>> fn(torch.ones(2, 5)).shape
    torch.Size([2, 1])
    """

    def embed(wavs):
        lens = torch.ones(wavs.shape[0], device=wavs.device)
        feats = compute_features(wavs)
        feats = mean_var_norm(feats, lens)
        return embedding_model(feats, lens)

    return embed


def condition_name(delta_db=None):
    """``clean``, or ``noise<delta_db>`` for a noisy condition.

    Example
    -------
    >>> condition_name(), condition_name(15), condition_name(2.5)
    ('clean', 'noise15', 'noise2.5')
    """
    return "clean" if delta_db is None else f"noise{float(delta_db):g}"


def _sha256_file(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_fingerprint(checkpoint_dir):
    """A hash of a SpeechBrain checkpoint: its ``CKPT.yaml`` and every weight file.

    Optimizer and dataloader states are left out (they never change the
    embeddings, and the optimizer file is the largest).

    Arguments
    ---------
    checkpoint_dir : str
        ``<save_folder>/CKPT+...``.

    Returns
    -------
    str
        Hex digest.

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = open(os.path.join(d, "CKPT.yaml"), "w").write("ErrorRate: 0.1\\n")
    >>> torch.save({"w": torch.ones(2)}, os.path.join(d, "embedding_model.ckpt"))
    >>> a = checkpoint_fingerprint(d)
    >>> torch.save({"w": torch.zeros(2)}, os.path.join(d, "embedding_model.ckpt"))
    >>> a == checkpoint_fingerprint(d)
    False
    """
    folder = Path(checkpoint_dir)
    meta = folder / "CKPT.yaml"
    if not meta.is_file():
        raise FileNotFoundError(f"'{folder}' is not a SpeechBrain checkpoint: no CKPT.yaml")
    digest = hashlib.sha256(meta.read_bytes())
    for path in sorted(folder.glob("*.ckpt")):
        if path.name.startswith(("optimizer", "dataloader")):
            continue
        digest.update(path.name.encode())
        digest.update(_sha256_file(path).encode())
    return digest.hexdigest()


_SIMPLE = (bool, int, float, str)


def module_signature(*modules):
    """Text describing modules' settings (type and simple attributes of every submodule).

    Used in cache keys for modules whose settings are not in the checkpoint
    (e.g. ``Fbank``'s ``n_mels``, hop and window).

    Example
    -------
    >>> module_signature(torch.nn.Linear(2, 3)) == module_signature(torch.nn.Linear(2, 4))
    False
    """
    parts = []
    for module in modules:
        if module is None:
            parts.append("None")
            continue
        named = module.named_modules() if isinstance(module, torch.nn.Module) else [("", module)]
        for name, sub in named:
            attrs = {
                k: v
                for k, v in sorted(vars(sub).items())
                if not k.startswith("_") and k != "training"
                and (isinstance(v, _SIMPLE) or (isinstance(v, (tuple, list)) and all(isinstance(x, _SIMPLE) for x in v)))
            }
            parts.append(f"{name}:{type(sub).__qualname__}:{attrs}")
    return "|".join(parts)


class EmbeddingCache:
    """Per-utterance embeddings on disk, keyed; a mismatched key is rebuilt.

    Files: ``<folder>/<name>.pt`` (a ``[U, D]`` float32 tensor) and
    ``<folder>/<name>.json`` (key, key parts, utterance list, extra info).
    Loaded with ``torch.load(weights_only=True)``.

    Arguments
    ---------
    folder : str
        E.g. ``<output>/embeddings/<checkpoint name>``.

    Example
    -------
    >>> import tempfile
    >>> cache = EmbeddingCache(tempfile.mkdtemp())
    >>> compute = lambda utts: (torch.ones(len(utts), 2), {"tiled": 0})
    >>> index, emb, info = cache.get("set_clean", {"ckpt": "A"}, ["u1", "u2"], compute)
    >>> cache.last_status
    'built'
    >>> _ = cache.get("set_clean", {"ckpt": "A"}, ["u2"], compute); cache.last_status
    'loaded'
    >>> _ = cache.get("set_clean", {"ckpt": "B"}, ["u2"], compute); cache.last_status
    'rebuilt: key mismatch'
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        self.last_status = None

    @staticmethod
    def key_of(parts):
        """SHA-256 of the json of the key parts."""
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def _load(self, name, key, utterances):
        index_file, tensor_file = self.folder / f"{name}.json", self.folder / f"{name}.pt"
        if not index_file.is_file() or not tensor_file.is_file():
            return None, "built"
        try:
            index = json.loads(index_file.read_text())
        except ValueError:
            return None, "rebuilt: unreadable index"
        if index.get("format") != CACHE_FORMAT or index.get("key") != key:
            return None, "rebuilt: key mismatch"
        stored = {u: i for i, u in enumerate(index["utterances"])}
        missing = sum(u not in stored for u in utterances)
        if missing:
            return None, f"rebuilt: {missing} utterance(s) not cached"
        embeddings = torch.load(tensor_file, map_location="cpu", weights_only=True)
        if not isinstance(embeddings, torch.Tensor) or embeddings.shape[0] != len(stored):
            return None, "rebuilt: tensor does not match its index"
        return (stored, embeddings, index.get("info", {})), "loaded"

    def get(self, name, key_parts, utterances, compute):
        """Returns ``(utterance -> row, [U, D] embeddings, info)``, from disk or ``compute``.

        Arguments
        ---------
        name : str
            File stem, e.g. ``vox1_o_noise15``.
        key_parts : dict
            Everything the embeddings depend on (json-serialisable).
        utterances : list of str
            Utterances needed.
        compute : callable
            ``compute(utterances) -> ([U, D] tensor, info dict)``.
        """
        key = self.key_of(key_parts)
        found, status = self._load(name, key, utterances)
        self.last_status = status
        if found is not None:
            logger.info("embeddings %s: loaded from %s", name, self.folder)
            return found
        if status != "built":
            logger.info("embeddings %s in %s %s (checkpoint, protocol or list changed)", name, self.folder, status)
        utterances = list(utterances)
        embeddings, info = compute(utterances)
        self.folder.mkdir(parents=True, exist_ok=True)
        tensor_file, index_file = self.folder / f"{name}.pt", self.folder / f"{name}.json"
        # Tensor first, index last: an interrupted write leaves an index
        # that does not match, never a tensor with a stale index.
        index_file.unlink(missing_ok=True)
        tmp = tensor_file.with_name(tensor_file.name + ".tmp")
        torch.save(embeddings.contiguous(), tmp)
        os.replace(tmp, tensor_file)
        index = {"format": CACHE_FORMAT, "key": key, "key_parts": key_parts, "utterances": utterances, "info": info}
        tmp = index_file.with_name(index_file.name + ".tmp")
        tmp.write_text(json.dumps(index, default=str))
        os.replace(tmp, index_file)
        return {u: i for i, u in enumerate(utterances)}, embeddings, info


def verification_metrics(scores, labels):
    """EER (fraction and %), its threshold and minDCF (p_target 0.01, c_miss = c_fa = 1, normalised).

    Example
    -------
    >>> m = verification_metrics(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 1, 0, 0]))
    >>> m["eer"], m["eer_percent"], m["min_dcf"]
    (0.0, 0.0, 0.0)
    """
    labels = np.asarray(labels)
    positive, negative = scores[labels == 1], scores[labels == 0]
    if len(positive) == 0 or len(negative) == 0:
        raise ValueError(
            f"a trial list needs target and non-target trials; got {len(positive)} and {len(negative)}"
        )
    eer_value, threshold = eer(positive, negative)
    dcf, _ = min_dcf(positive, negative, p_target=P_TARGET, c_miss=1.0, c_fa=1.0)
    return {
        "trials": int(len(labels)),
        "target_trials": int(len(positive)),
        "nontarget_trials": int(len(negative)),
        "eer": eer_value,
        "eer_percent": 100.0 * eer_value,
        "eer_threshold": threshold,
        "min_dcf": dcf,
        "min_dcf_p_target": P_TARGET,
    }


class _AtDeltaDb:
    """``transform(signal, key)`` mixing the picker's noise at one ``delta_db`` (picklable for workers)."""

    def __init__(self, picker, delta_db):
        self.picker, self.delta_db = picker, float(delta_db)

    def __call__(self, signal, key):
        return self.picker(signal, key, self.delta_db)


class SpeakerEvaluator:
    """Embeds, caches, scores and measures trial sets for one checkpoint.

    Arguments
    ---------
    embed_fn : callable
        ``wavs [N, samples] -> [N, D]`` in eval mode (see :func:`speech_embedding_fn`).
    output_folder : str
        The run's folder: ``scores/``, ``embeddings/`` and ``results.json`` go there.
    checkpoint : speechbrain Checkpoint or str, optional
        The loaded checkpoint (its folder names the cache); None: no disk cache.
    sample_rate, crop_seconds, n_crops : protocol (16 kHz, 4 s, 10).
    batch_size : int
        Utterances per forward.
    device : str
        Where ``embed_fn`` runs.
    num_workers : int
        Audio-reading workers.
    fingerprint_modules : list of torch.nn.Module
        Modules outside the checkpoint that change embeddings (features).
    progressbar : bool
        Show progress bars.
    """

    def __init__(self, embed_fn, output_folder, checkpoint=None, sample_rate=16000, crop_seconds=4.0,
                 n_crops=10, batch_size=32, device="cpu", num_workers=0, fingerprint_modules=(),
                 progressbar=False):
        self.embed_fn = embed_fn
        self.output_folder = Path(output_folder)
        self.sample_rate, self.crop_seconds, self.n_crops = int(sample_rate), float(crop_seconds), int(n_crops)
        self.batch_size, self.device, self.num_workers = int(batch_size), device, int(num_workers)
        self.progressbar = progressbar
        self.checkpoint_name, self.cache, self.checkpoint_key = None, None, None
        if checkpoint is not None:
            folder = Path(getattr(checkpoint, "path", checkpoint))
            self.checkpoint_name = folder.name
            self.checkpoint_key = checkpoint_fingerprint(folder)
            self.cache = EmbeddingCache(self.output_folder / "embeddings" / folder.name)
        self.protocol = {
            "sample_rate": self.sample_rate,
            "crop_seconds": self.crop_seconds,
            "n_crops": self.n_crops,
            "features": hashlib.sha256(module_signature(*fingerprint_modules).encode()).hexdigest()[:16],
        }

    def embeddings(self, trial_set, utterances, delta_db=None, noise=None):
        """``(utterance -> row, [U, D], info)`` for utterances of a set, clean or noisy."""
        condition = condition_name(delta_db)
        transform = None if delta_db is None else _AtDeltaDb(noise, delta_db)

        def compute(utts):
            paths = [trial_set.path(u) for u in utts]
            logger.info("%s (%s): embedding %d utterances x %d crops", trial_set.name, condition, len(utts), self.n_crops)
            embeddings, tiled = embed_utterances(
                self.embed_fn, paths, self.sample_rate, self.crop_seconds, self.n_crops, self.batch_size,
                self.device, progressbar=self.progressbar, transform=transform, keys=utts,
                num_workers=self.num_workers,
            )
            return embeddings, {"tiled": int(tiled)}

        if self.cache is None:
            embeddings, info = compute(list(utterances))
            return {u: i for i, u in enumerate(utterances)}, embeddings, info
        key = {
            "checkpoint": self.checkpoint_key,
            "protocol": self.protocol,
            "condition": condition,
            "noise": None if noise is None or delta_db is None else noise.signature(),
            "audio_root": os.path.abspath(trial_set.audio_root),
        }
        return self.cache.get(f"{trial_set.name}_{condition}", key, utterances, compute)

    def evaluate(self, trial_set, noise=None, noise_levels_db=()):
        """Scores a set clean and at each ``delta_db`` (noise on the test side only).

        Arguments
        ---------
        trial_set : TrialSet
            What to score.
        noise : NoisePicker, optional
            Needed when ``noise_levels_db`` is not empty.
        noise_levels_db : sequence of float
            Eq. 13's ``delta_db`` values, e.g. ``[15, 10, 5]``.

        Returns
        -------
        dict
            ``condition -> metrics`` (see :func:`verification_metrics`,
            plus ``tiled``, ``skipped_missing``, ``checkpoint``, and for
            noise ``delta_db``, ``noise_side``, ``noise``).
        """
        if noise_levels_db and noise is None:
            raise ValueError(f"{trial_set.name}: noise levels {list(noise_levels_db)} need a noise folder")
        index, clean, info = self.embeddings(trial_set, trial_set.utterances)
        results = {"clean": self._measure(trial_set, index, clean, index, clean, "clean", info)}
        for delta_db in noise_levels_db:
            test_index, noisy, noisy_info = self.embeddings(trial_set, trial_set.test_utterances, delta_db, noise)
            entry = self._measure(trial_set, index, clean, test_index, noisy, condition_name(delta_db), noisy_info)
            entry.update(delta_db=float(delta_db), noise_side="test", noise=noise.signature())
            results[condition_name(delta_db)] = entry
        return results

    def _measure(self, trial_set, enrol_index, enrol_emb, test_index, test_emb, condition, info):
        scores, labels = score_trial_set(trial_set, enrol_index, enrol_emb, test_index, test_emb)
        write_scores(self.output_folder / "scores" / f"{trial_set.name}_{condition}.txt", trial_set.trials, scores)
        entry = verification_metrics(scores, labels)
        entry.update(tiled=info.get("tiled", 0), skipped_missing=trial_set.skipped, checkpoint=self.checkpoint_name,
                     n_crops=self.n_crops, crop_seconds=self.crop_seconds)
        logger.info("%s %s: EER %.2f%%, minDCF %.4f over %d trials", trial_set.name, condition,
                    entry["eer_percent"], entry["min_dcf"], entry["trials"])
        return entry

    def update_results(self, updates):
        """Merges ``{set: {condition: entry}}`` (and ``matching``) into ``results.json``."""
        return merge_results(self.output_folder / "results.json", updates, self.checkpoint_name)


def merge_results(results_file, updates, checkpoint_name=None):
    """Merges updates into a results.json; drops entries measured on another checkpoint.

    Arguments
    ---------
    results_file : str
        The file (created if missing).
    updates : dict
        ``{set: {condition: entry}}``; a ``matching`` entry is replaced whole.
    checkpoint_name : str, optional
        The checkpoint the updates come from; older entries carrying a
        different ``checkpoint`` are removed (with a log line), so a table
        never mixes checkpoints.

    Returns
    -------
    dict
        The merged content.

    Example
    -------
    >>> import tempfile
    >>> f = os.path.join(tempfile.mkdtemp(), "results.json")
    >>> _ = merge_results(f, {"s": {"clean": {"eer": 0.1, "checkpoint": "A"}, "noise5": {"checkpoint": "A"}}}, "A")
    >>> sorted(merge_results(f, {"s": {"clean": {"eer": 0.2, "checkpoint": "B"}}}, "B")["s"])
    ['clean']
    """
    results_file = Path(results_file)
    merged = json.loads(results_file.read_text()) if results_file.exists() else {}
    for name, value in updates.items():
        if name == "matching":
            merged[name] = value
        else:
            merged.setdefault(name, {}).update(value)
    if checkpoint_name is not None:
        for name in list(merged):
            entries = merged[name]
            if name == "matching":
                if entries.get("checkpoint") not in (None, checkpoint_name):
                    logger.info("results.json: dropping 'matching' from checkpoint %s", entries.get("checkpoint"))
                    del merged[name]
                continue
            for condition in list(entries):
                old = entries[condition].get("checkpoint")
                if old is not None and old != checkpoint_name:
                    logger.info("results.json: dropping %s/%s measured on checkpoint %s", name, condition, old)
                    del entries[condition]
            if not entries:
                del merged[name]
    tmp = results_file.with_name(results_file.name + ".tmp")
    results_file.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(merged, indent=2))
    os.replace(tmp, results_file)
    return merged


class EpochVerifier:
    """Test-set EER after validation epochs, for the training curves (Fig. 6).

    ``XMKDBrain`` calls it (as ``valid_verification`` in the yaml) at the
    end of each validation stage; it returns ``{"EER": percent}`` which
    goes to the train log next to ``ErrorRate``. It uses fewer crops than
    the final evaluation to stay cheap, and is not a checkpoint criterion
    unless the yaml says so (``ckpt_key: EER``), which would select on the
    test set.

    Arguments
    ---------
    trial_file : str
        VoxCeleb-format trial list (read at the first call, after data
        preparation).
    audio_root : str
        Folder of its audio.
    sample_rate, crop_seconds, n_crops, batch_size : protocol settings.
    every : int
        Run after epoch 1 and every ``every`` epochs; 0 disables it.
    max_trials : int, optional
        Score a seeded subset of this many trials (large lists).
    """

    def __init__(self, trial_file, audio_root, sample_rate=16000, crop_seconds=4.0, n_crops=2,
                 batch_size=16, every=1, max_trials=None):
        self.trial_file, self.audio_root = trial_file, audio_root
        self.sample_rate, self.crop_seconds, self.n_crops = sample_rate, crop_seconds, n_crops
        self.batch_size, self.every, self.max_trials = batch_size, int(every), max_trials
        self.trial_set = None

    def __call__(self, brain, epoch=None):
        """Returns ``{"EER": percent}`` (or ``{}`` on epochs it skips)."""
        if self.every <= 0 or (epoch is not None and epoch != 1 and epoch % self.every):
            return {}
        from .trials import TrialSet, read_voxceleb_trials

        if self.trial_set is None:
            trial_set = read_voxceleb_trials(self.trial_file, self.audio_root, "epoch")
            if self.max_trials and len(trial_set.trials) > self.max_trials:
                keep = np.sort(np.random.default_rng(0).choice(len(trial_set.trials), self.max_trials, replace=False))
                trials = [trial_set.trials[i] for i in keep]
                trial_set = TrialSet("epoch", trials, {t[1]: (t[1],) for t in trials}, trial_set.audio_root)
            self.trial_set = trial_set
        modules = brain.modules
        was_training = modules.training
        modules.eval()
        embed = speech_embedding_fn(modules.compute_features, modules.mean_var_norm, modules.embedding_model)
        paths = [self.trial_set.path(u) for u in self.trial_set.utterances]
        embeddings, _ = embed_utterances(embed, paths, self.sample_rate, self.crop_seconds, self.n_crops,
                                         self.batch_size, brain.device)
        index = {u: i for i, u in enumerate(self.trial_set.utterances)}
        scores, labels = score_trial_set(self.trial_set, index, embeddings, index, embeddings)
        modules.train(was_training)
        return {"EER": verification_metrics(scores, labels)["eer_percent"]}
