"""Model cards (README.md with Hub metadata) for exported students, and the citations."""

from pathlib import Path

from .run_folder import Tagged, read_results, tagged_targets

PAPER_CITATION = """@article{zhao2025crossmodal,
  title={Cross-Modal Distillation for Widely Differing Modalities},
  author={Zhao, Cairong and Jin, Yufeng and Song, Zifan and Chen, Haonan and Miao, Duoqian and Hu, Guosheng},
  journal={arXiv preprint arXiv:2507.16296},
  year={2025}
}"""
SPEECHBRAIN_CITATION = """@misc{speechbrainV1,
  title={Open-Source Conversational AI with {SpeechBrain} 1.0},
  author={Mirco Ravanelli and Titouan Parcollet and Adel Moumen and Sylvain de Langen and Cem Subakan and Peter Plantinga and Yingzhi Wang and Pooneh Mousavi and Luca Della Libera and Artem Ploujnikov and Francesco Paissan and Davide Borra and Salah Zaiem and Zeyu Zhao and Shucong Zhang and Georgios Karakasidis and Sung-Lin Yeh and Pierre Champion and Aku Rouhe and Rudolf Braun and Florian Mai and Juan Zuluaga-Gomez and Seyed Mahed Mousavi and Andreas Nautsch and Xuechen Liu and Sangeet Sagar and Jarod Duret and Salima Mdhaffar and Gaelle Laperriere and Mickael Rouvier and Renato De Mori and Yannick Esteve},
  year={2024},
  eprint={2407.00463},
  archivePrefix={arXiv},
  primaryClass={cs.LG}
}
@misc{speechbrain,
  title={{SpeechBrain}: A General-Purpose Speech Toolkit},
  author={Mirco Ravanelli and Titouan Parcollet and Peter Plantinga and Aku Rouhe and Samuele Cornell and Loren Lugosch and Cem Subakan and Nauman Dawalatabad and Abdelwahab Heba and Jianyuan Zhong and Ju-Chieh Chou and Sung-Lin Yeh and Szu-Wei Fu and Chien-Feng Liao and Elena Rastorgueva and François Grondin and William Aris and Hwidong Na and Yan Gao and Renato De Mori and Yoshua Bengio},
  year={2021},
  eprint={2106.04624},
  archivePrefix={arXiv},
  primaryClass={eess.AS}
}"""


def speaker_model_card(run, run_dir, checkpoint, key, nodes, norm_count):
    """README.md of an exported speaker student: Hub metadata, training, results, use, citation.

    Arguments
    ---------
    run : dict
        The run's tagged hyperparams (:func:`~speechbrain_xmkd.run_folder.read_run`).
    run_dir : str
        The run folder (its results.json gives the results table).
    checkpoint : speechbrain.utils.checkpoints.Checkpoint
        The exported checkpoint.
    key : str
        The meta key it was chosen by.
    nodes : dict
        The exported ``!new:`` nodes (the student's class is named).
    norm_count : int
        Utterances the embedding normaliser was fit on.

    Returns
    -------
    str
    """
    student = nodes["embedding_model"].target
    choice = _first(run, "student")
    emb_dim = _first(run, "emb_dim", default="?")
    modules = {t.split(".")[0] for n in nodes.values() for t in tagged_targets(n)}
    extra = sorted(modules - {"speechbrain", "torch"})
    trained = [
        ("distillation method", _first(run, "method")),
        ("projection", _first(run, "projection")),
        ("quality weights", _first(run, "quality")),
        ("projection skip mix alpha", _first(run, "alpha")),
        ("soft margin", _describe_margin(run)),
        ("teacher", _describe_teacher(run)),
        ("student", f"`{student}`" + (f" ({choice})" if choice else "") + f", {emb_dim}-d embeddings"),
        ("task loss", _first(run, "task", default="aam")),
        ("features", f"{_first(run, 'n_mels', default='?')} log-mel filterbanks at "
                     f"{_first(run, 'sample_rate', default=16000)} Hz"),
        ("training crops", f"{_first(run, 'sentence_len', default='?')} s"),
        ("epochs", _first(run, "number_of_epochs")),
        ("share of training data", _first(run, "data_fraction")),
        ("training speakers", _first(run, "out_n_neurons")),
        ("checkpoint", f"`{checkpoint.path.name}`, epoch {checkpoint.meta.get('epoch', '?')}, "
                       f"validation {key} {checkpoint.meta.get(key)}"),
        ("embedding normaliser", f"global mean of {norm_count} training utterances (whole segments)"),
    ]
    source = "<this folder or hub id>"
    lines = [
        "---",
        "library_name: speechbrain",
        "tags:",
        *[f"  - {tag}" for tag in ("speaker-recognition", "speaker-verification", "embeddings",
                                   "knowledge-distillation", "cross-modal-distillation", "speechbrain")],
        "---",
        "",
        f"# Speaker embeddings distilled from faces ({Path(run_dir).name})",
        "",
        "A speech-only speaker model trained with cross-modal knowledge distillation "
        "(Zhao et al., 2025): during training a frozen face model taught the speech "
        "student through a trainable projection head; at inference only speech is used. "
        "This folder holds the student alone (features, embedding model, speaker head), "
        "nothing of the teacher or of the projection head.",
        "",
        "## How it was trained",
        "",
        "| | |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in trained if value is not None],
        "",
        "## Results",
        "",
        *_results_table(run, run_dir),
        "",
        "## Use it",
        "",
        *([f"Needs the Python module(s) {', '.join(extra)} besides SpeechBrain.", ""] if extra else []),
        "```python",
        "from speechbrain.inference.speaker import SpeakerRecognition",
        "from speechbrain.inference.classifiers import EncoderClassifier",
        "",
        f'verification = SpeakerRecognition.from_hparams(source="{source}", savedir="model")',
        'score, same = verification.verify_files("a.wav", "b.wav")  # cosine; same = score > 0.25',
        "",
        f'encoder = EncoderClassifier.from_hparams(source="{source}", savedir="model")',
        'signal = encoder.load_audio("a.wav")',
        f"embedding = encoder.encode_batch(signal.unsqueeze(0))  # [1, 1, {emb_dim}]",
        "```",
        "",
        "`verify_files` decides with SpeechBrain's fixed threshold 0.25; `verification_threshold` "
        "in hyperparams.yaml (when present) is this model's EER threshold on the run's trial "
        "list, which the command-line tools of speechbrain-xmkd use:",
        "",
        "```bash",
        "xmkd-verify a.wav b.wav --model <this folder>",
        "xmkd-embed wavs/ --model <this folder> --out emb.npy",
        "```",
        "",
        "`classify_file` names one of the training speakers (`label_encoder.txt`); to recognise "
        "new speakers, compare embeddings.",
        "",
        *_citations(),
    ]
    return "\n".join(lines)


def image_model_card(architecture, kwargs, class_names, preprocessing, description=None):
    """README.md of an exported image student (see :mod:`speechbrain_xmkd.image_export`)."""
    shown = ", ".join(class_names[:10]) + (", ..." if len(class_names) > 10 else "")
    lines = [
        "---",
        "tags:",
        *[f"  - {tag}" for tag in ("image-classification", "knowledge-distillation", "cross-modal-distillation")],
        "---",
        "",
        "# Image classifier: a cross-modal distillation student",
        "",
        description
        or "An image classifier trained with cross-modal knowledge distillation (Zhao et al., 2025); "
        "only the student network is included.",
        "",
        "## Model",
        "",
        *_describe_network(architecture, kwargs),
        f"- {len(class_names)} classes (`classes.txt`, one per line): {shown}",
        f"- preprocessing (`preprocessing.json`): shorter side to {preprocessing['resize']}, centre crop "
        f"{preprocessing['crop']}, RGB in [0, 1], mean {preprocessing['mean']}, std {preprocessing['std']}",
        "",
        "## Use it",
        "",
        "```python",
        "from speechbrain_xmkd.hub import ImageClassifier",
        "",
        'classifier = ImageClassifier.from_folder("<this folder>")',
        'label, probability = classifier.classify_file("image.png")',
        "```",
        "",
        *_citations(),
    ]
    return "\n".join(lines)


def _describe_network(architecture, kwargs):
    def call(target, arguments):
        return f"`{target}(" + ", ".join(f"{k}={v!r}" for k, v in arguments.items()) + ")`"

    if architecture.endswith("StudentClassifier"):
        trunk, head = kwargs["embedding"], kwargs["classifier"]
        return [
            f"- network (`model.json`, weights in `model.ckpt`): {call(trunk['architecture'], trunk.get('kwargs', {}))} "
            f"then {call(head['architecture'], head.get('kwargs', {}))}"
        ]
    return [f"- network (`model.json`, weights in `model.ckpt`): {call(architecture, kwargs)}"]


def image_run_description(run, run_dir, checkpoint, key):
    """Markdown for an image run's card: how it was trained and its results.json."""
    trained = [
        ("distillation method", _first(run, "method")),
        ("projection", _first(run, "projection")),
        ("quality weights", _first(run, "quality")),
        ("projection skip mix alpha", _first(run, "alpha")),
        ("soft margin", _describe_margin(run)),
        ("teacher", _describe_text_teacher(run)),
        ("student", _first(run, "student")),
        ("epochs", _first(run, "number_of_epochs")),
        ("share of training data", _first(run, "data_fraction")),
        ("checkpoint", f"`{checkpoint.path.name}`, epoch {checkpoint.meta.get('epoch', '?')}, "
                       f"validation {key} {checkpoint.meta.get(key)}"),
    ]
    lines = [
        "An image classifier trained with cross-modal knowledge distillation (Zhao et al., 2025): "
        "during training a frozen text encoder reading class prompts taught the image student "
        "through a trainable projection head; at inference only images are used. Only the "
        f"student (trunk and classifier) is included. Run: `{Path(run_dir).name}`.",
        "",
        "## How it was trained",
        "",
        "| | |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in trained if value is not None],
        "",
        "## Results",
        "",
    ]
    rows = _flat_numbers(read_results(run_dir))
    if rows:
        lines += ["| metric (results.json) | value |", "|---|---|"]
        lines += [f"| {name} | {value:.4g} |" for name, value in rows]
    else:
        lines.append("No results: the run folder has no results.json.")
    return "\n".join(lines)


def _flat_numbers(data, prefix=""):
    rows = []
    for name, value in (data or {}).items():
        label = f"{prefix}{name}"
        if isinstance(value, dict):
            rows += _flat_numbers(value, label + ".")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append((label, value))
    return rows


def _describe_text_teacher(run):
    kind = _first(run, "teacher_kind")
    if kind is None:
        return None
    return f"{kind} text encoder, frozen"


def _citations():
    return ["## Citation", "", "```bibtex", PAPER_CITATION, "```", "", "```bibtex", SPEECHBRAIN_CITATION, "```", ""]


def _results_table(run, run_dir):
    rows = []
    for name, conditions in read_results(run_dir).items():
        for condition, result in (conditions or {}).items():
            if isinstance(result, dict) and "eer" in result:
                rows.append(
                    f"| {name} | {condition} | {result.get('trials', '?')} | {100 * result['eer']:.2f} "
                    f"| {result.get('min_dcf', float('nan')):.4f} |"
                )
    if not rows:
        return ["No verification results: the run folder has no results.json."]
    return [
        f"Verification ({_first(run, 'test_n_crops', default=10)} crops of "
        f"{_first(run, 'test_crop_seconds', default=4.0)} s per utterance, score = mean cosine; "
        "minDCF with p_target 0.01):",
        "",
        "| trial list | condition | trials | EER (%) | minDCF |",
        "|---|---|---|---|---|",
    ] + rows


def _first(run, key, default=None):
    value = run.get(key, default)
    if isinstance(value, Tagged):
        return default
    return value


def _describe_margin(run):
    if run.get("method") != "feature":
        return None
    return f"{_first(run, 'margin')} ({_first(run, 'distance', default='cosine')})"


def _describe_teacher(run):
    kind = _first(run, "teacher_kind")
    if kind is None:
        return None
    weights = _first(run, "teacher_weights")
    name = f" (`{Path(str(weights)).name}`)" if weights else ""
    return f"{kind}{name}, frozen, {_first(run, 'teacher_dim', default='?')}-d face embeddings"
