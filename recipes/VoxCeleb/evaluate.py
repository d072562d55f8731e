#!/usr/bin/env python3
"""Evaluates a trained speaker run: trial sets clean and noisy, face-voice matching, reports.

Run it with the yaml and overrides of the training run; it loads the best
checkpoint of ``<output_folder>/save`` (lowest ``ckpt_key``, default
``ErrorRate``)::

    python recipes/VoxCeleb/evaluate.py recipes/VoxCeleb/hparams/synthetic_xmkd.yaml
    python recipes/VoxCeleb/evaluate.py recipes/VoxCeleb/hparams/resnet34_xmkd.yaml \\
        --data_folder /data/voxceleb2 --voxceleb1_folder /data/voxceleb1 \\
        --teacher_weights ir50.pth --noise_folder /data/musan/noise --output_folder results/x

What it scores (all named in the yaml): ``eval_sets`` of ``trial_sets``
(VoxCeleb1-O/E/H, CN-Celeb, the embedded corpus's list), clean and, for
``noise_sets``, with noise at each of ``noise_levels_db`` (Eq. 13, test
side only); ten 4 s crops per utterance, mean cosine over the 10 x 10
crop pairs. Then face-voice matching (Table 4) on ``matching_set``.

Outputs in ``<output_folder>``: ``results.json`` (per set and condition:
trials, ``eer`` as a fraction, ``eer_percent``, ``min_dcf`` at p_target
0.01; and ``matching``), ``results.md`` (Table 1 layout),
``scores/<set>_<condition>.txt`` (``enrol test label score``),
``embeddings/<checkpoint>/`` (cached embeddings, rebuilt when the
checkpoint or the protocol changes, and the samples for the t-SNE plot).
``--skip_missing`` leaves out (and counts) trials naming a missing file.
"""

import logging
import os
import sys
from pathlib import Path

import numpy as np
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speechbrain_xmkd.config import select  # noqa: E402
from speechbrain_xmkd.evaluation import SpeakerEvaluator, speech_embedding_fn  # noqa: E402
from speechbrain_xmkd.matching import StudentSpace, list_faces, read_genders, run_matching  # noqa: E402
from speechbrain_xmkd.noise import NoisePicker  # noqa: E402
from speechbrain_xmkd.reports import results_markdown  # noqa: E402
from speechbrain_xmkd.teachers import FrozenTeacher, build_or_load_cache  # noqa: E402
from speechbrain_xmkd.trials import load_trial_set  # noqa: E402

logger = logging.getLogger("evaluate")

CROSSMODAL_SAMPLES = "crossmodal_samples.pt"


def load_best_checkpoint(hparams, device):
    """Loads the best checkpoint of the run into the yaml's modules; returns it."""
    checkpointer = hparams["checkpointer"]
    key = hparams.get("ckpt_key", "ErrorRate")
    checkpoint = checkpointer.find_checkpoint(min_key=key)
    if checkpoint is None:
        raise FileNotFoundError(
            f"no checkpoint with '{key}' in '{hparams['save_folder']}': train this run first "
            "(train.py with the same yaml and overrides)"
        )
    try:
        checkpointer.load_checkpoint(checkpoint)
    except RuntimeError as err:  # state_dict mismatch: another method / width than the run
        raise RuntimeError(
            f"checkpoint '{checkpoint.path}' does not fit the models this yaml builds; pass the same "
            f"overrides as the training run (they are in {Path(hparams['output_folder']) / 'hyperparams.yaml'}):"
            f"\n{err}"
        ) from None
    for name in ("compute_features", "mean_var_norm", "embedding_model", "distiller"):
        hparams[name].to(device).eval()
    logger.info("Evaluating checkpoint %s (%s = %s)", checkpoint.path.name, key, checkpoint.meta.get(key))
    return checkpoint


def noise_picker(hparams):
    """The seeded noise source, or None when no noisy condition is asked for."""
    if not hparams.get("noise_levels_db") or not hparams.get("noise_sets"):
        return None
    folder = hparams.get("noise_folder")
    if folder is None:
        raise ValueError(
            "noise_levels_db is set but noise_folder is not: pass --noise_folder=/data/musan/noise "
            "(any folder of noise wavs) or --noise_levels_db=[]"
        )
    return NoisePicker(folder, seed=hparams.get("noise_seed", 0), sample_rate=hparams["sample_rate"])


def evaluate_matching(hparams, evaluator, trial_set, run_opts):
    """Table 4 on the utterances of ``trial_set`` and the faces of its identities.

    Also saves up to ``tsne_samples`` (face, projected face, speech, gender)
    samples for the t-SNE plot of Fig. 8.
    """
    checkpoint = evaluator.checkpoint_name
    entry = {"checkpoint": checkpoint, "chance_percent": 50.0}
    faces_folder = hparams.get("matching_faces_folder")
    if faces_folder is None:
        return {**entry, "note": "matching_faces_folder (test faces, <identity>/<video>.png) is not set: skipped"}
    distiller = hparams["distiller"]
    if not distiller.distills:
        return {**entry, "note": StudentSpace(distiller, 0, 0).note}

    voices = {}
    for utterance in trial_set.utterances:
        voices.setdefault(utterance.split("/")[0], []).append(utterance)
    faces = list_faces(faces_folder, voices)
    if not faces:
        return {**entry, "note": f"no face of the {len(voices)} identities of {trial_set.name} in '{faces_folder}'"}
    meta = hparams.get("matching_meta_file")
    genders = read_genders(meta) if meta else None

    index, speech, _ = evaluator.embeddings(trial_set, trial_set.utterances)
    setup = hparams.get("prepare_teacher")
    if setup is not None:  # trains the small face teacher only when it is missing
        setup(run_opts={"device": run_opts.get("device") or "cpu"})
    teacher = FrozenTeacher(select(hparams["teachers"], hparams["teacher_kind"], "teacher_kind"))
    face_paths = sorted({p for paths in faces.values() for p in paths})
    # Own folder: the training cache would be rewritten for the test faces only.
    cache = build_or_load_cache(
        teacher, [(p, p) for p in face_paths], os.path.join(hparams["teacher_cache_folder"], "test_faces"),
        batch_size=hparams.get("teacher_batch_size", 64), extra_key=hparams.get("teacher_cache_extra"),
        device=run_opts.get("device") or "cpu", progressbar=False,
    )
    raw = cache.lookup(face_paths).float()
    space = StudentSpace(distiller, raw.shape[1], speech.shape[1])
    if space.note:
        return {**entry, "note": space.note}
    device = run_opts.get("device") or "cpu"
    faces_in_space = space.face(raw.to(device)).float().cpu()
    voices_in_space = space.voice(speech.to(device)).float().cpu()
    face_vectors = dict(zip(face_paths, faces_in_space))
    voice_vectors = {u: voices_in_space[i] for u, i in index.items()}
    results = run_matching(
        {k: v for k, v in voices.items() if k in faces}, faces, voice_vectors, face_vectors, genders,
        n=hparams.get("matching_triples", 10000), seed=hparams.get("matching_seed", 0),
    )
    entry.update(results, space=space.description, identities=len(faces),
                 triples=hparams.get("matching_triples", 10000), seed=hparams.get("matching_seed", 0))
    for name, value in results.items():
        if "accuracy_percent" in value:
            logger.info("matching %s: %.2f%% (chance 50%%)", name, value["accuracy_percent"])

    # Fig. 8: random test samples, each an utterance with the face of its video.
    samples = [u for u in trial_set.utterances if u.split("/")[0] in faces]
    rng = np.random.default_rng(hparams.get("matching_seed", 0))
    samples = [samples[i] for i in sorted(rng.permutation(len(samples))[: hparams.get("tsne_samples", 200)])]
    face_row = {p: i for i, p in enumerate(face_paths)}

    def face_of(utterance):
        identity, video = utterance.split("/")[:2]
        same_video = [p for p in faces[identity] if Path(p).stem == video]
        return (same_video or faces[identity])[0]

    rows = torch.tensor([face_row[face_of(u)] for u in samples])
    projection = getattr(distiller, "projection", None)
    skip = getattr(projection, "skip", None)
    aligned = raw if raw.shape[1] == speech.shape[1] else (raw @ skip.T.cpu().float() if skip is not None else None)
    torch.save(
        {
            "face": raw[rows],
            "face_in_student_width": None if aligned is None else aligned[rows],
            "projected_face": faces_in_space[rows] if projection is not None else None,
            "speech": speech[torch.tensor([index[u] for u in samples])],
            "identity": [u.split("/")[0] for u in samples],
            "gender": [str(genders.get(u.split("/")[0], "?")) if genders else "?" for u in samples],
            "utterance": samples,
        },
        evaluator.cache.folder / CROSSMODAL_SAMPLES if evaluator.cache else Path(hparams["output_folder"]) / CROSSMODAL_SAMPLES,
    )
    return entry


def main(argv):
    argv = ["--skip_missing=True" if arg == "--skip_missing" else arg for arg in argv]
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    logging.basicConfig(level=logging.INFO, format="%(name)s - %(message)s")
    device = run_opts.get("device") or "cpu"
    checkpoint = load_best_checkpoint(hparams, device)

    evaluator = SpeakerEvaluator(
        speech_embedding_fn(hparams["compute_features"], hparams["mean_var_norm"], hparams["embedding_model"]),
        hparams["output_folder"],
        checkpoint=checkpoint,
        sample_rate=hparams["sample_rate"],
        crop_seconds=hparams.get("test_crop_seconds", 4.0),
        n_crops=hparams.get("test_n_crops", 10),
        batch_size=hparams.get("test_batch_size", 32),
        device=device,
        num_workers=hparams.get("test_num_workers", 0),
        fingerprint_modules=[hparams["compute_features"], hparams["mean_var_norm"]],
        progressbar=not run_opts.get("noprogressbar", False),
    )
    noise = noise_picker(hparams)
    specs = hparams["trial_sets"]
    updates, loaded = {}, {}
    for name in hparams["eval_sets"]:
        if name not in specs:
            raise KeyError(f"eval_sets names '{name}', which is not in trial_sets ({', '.join(specs)})")
        try:
            loaded[name] = load_trial_set(name, specs[name], skip_missing=hparams.get("skip_missing", False))
        except FileNotFoundError as err:
            if "trial list" not in str(err) and "CN-Celeb list" not in str(err):
                raise
            raise FileNotFoundError(f"{err}; get it, or leave '{name}' out of eval_sets (--eval_sets=[...])") from None
        noisy = name in (hparams.get("noise_sets") or [])
        levels = (hparams.get("noise_levels_db") or []) if noisy else []
        updates[name] = evaluator.evaluate(loaded[name], noise, levels)

    matching_set = hparams.get("matching_set")
    if matching_set:
        if matching_set not in loaded:
            loaded[matching_set] = load_trial_set(matching_set, specs[matching_set], hparams.get("skip_missing", False))
        updates["matching"] = evaluate_matching(hparams, evaluator, loaded[matching_set], run_opts)

    merged = evaluator.update_results(updates)
    name = Path(hparams["output_folder"]).name
    table = results_markdown(merged, name=name)
    (Path(hparams["output_folder"]) / "results.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return merged


if __name__ == "__main__":
    main(sys.argv[1:])
