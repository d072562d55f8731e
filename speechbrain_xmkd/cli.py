"""Command-line tools for exported speaker students (SpeechBrain's classes underneath).

    xmkd-verify a.wav b.wav --model model_dir [--threshold T] [--device cpu]
    xmkd-embed wavs/ --model model_dir --out emb.npy [--batch_size 16]

Also ``python -m speechbrain_xmkd.cli verify|embed ...``. ``model_dir`` is a
folder written by ``python -m speechbrain_xmkd.export``; nothing is
downloaded and nothing is written into it.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from .audio import AudioError, audio_info
from .fileio import atomic_write

DEFAULT_THRESHOLD = 0.25  # SpeechBrain's verify_batch default


class CommandError(Exception):
    """A problem with the user's input; printed as one line, no traceback."""


def load_model(model_dir, interface="speaker", device="cpu"):
    """An exported model folder as SpeechBrain's SpeakerRecognition or EncoderClassifier.

    Arguments
    ---------
    model_dir : str
        Exported folder (local only: a missing folder is an error, never a Hub id).
    interface : str
        ``"speaker"`` (SpeakerRecognition) or ``"classifier"`` (EncoderClassifier).
    device : str
        ``cpu``, ``cuda``, ``cuda:1``...

    Example
    -------
    >>> load_model("no/such/model")
    Traceback (most recent call last):
    ...
    speechbrain_xmkd.cli.CommandError: model folder 'no/such/model' does not exist
    """
    folder = check_model_folder(model_dir)
    if interface == "speaker":
        from speechbrain.inference.speaker import SpeakerRecognition as cls
    else:
        from speechbrain.inference.classifiers import EncoderClassifier as cls
    # An absolute existing folder is a local source; savedir=None links nothing.
    return cls.from_hparams(source=str(folder.resolve()), savedir=None, run_opts={"device": device})


def check_model_folder(model_dir):
    """``Path(model_dir)`` if it holds an exported model, else a :class:`CommandError`."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise CommandError(f"model folder '{model_dir}' does not exist")
    if not (folder / "hyperparams.yaml").is_file():
        raise CommandError(
            f"'{model_dir}' is not an exported model (no hyperparams.yaml); make one with "
            f"python -m speechbrain_xmkd.export RUN_FOLDER --out {model_dir}"
        )
    return folder


def read_audio(model, path):
    """``model.load_audio`` (resampled, mono) with an error that names the file."""
    path = Path(path)
    if not path.is_file():
        raise CommandError(f"audio file '{path}' does not exist")
    try:
        audio_info(path)
        return model.load_audio(str(path.resolve()))
    except AudioError as err:
        raise CommandError(str(err)) from None
    except Exception as err:  # decoders raise their own types
        raise CommandError(f"audio file '{path}' cannot be read: {err}") from None


def find_wavs(folder):
    """Every ``.wav`` under ``folder`` (recursive, sorted), checked readable.

    Example
    -------
    >>> find_wavs("no/such/folder")
    Traceback (most recent call last):
    ...
    speechbrain_xmkd.cli.CommandError: folder 'no/such/folder' does not exist
    """
    root = Path(folder)
    if not root.is_dir():
        raise CommandError(f"folder '{folder}' does not exist")
    wavs = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".wav" and p.is_file())
    if not wavs:
        raise CommandError(f"no .wav files under '{folder}'")
    for path in wavs:  # before the model loads: a bad file fails fast
        try:
            audio_info(path)
        except AudioError as err:
            raise CommandError(str(err)) from None
    return wavs


def verify(argv=None):
    """``xmkd-verify``: cosine score of two files and the same-speaker decision."""
    parser = argparse.ArgumentParser(
        prog="xmkd-verify", description="Are two recordings the same speaker? Prints the cosine score and decision."
    )
    parser.add_argument("first", help="audio file")
    parser.add_argument("second", help="audio file")
    parser.add_argument("--model", required=True, help="exported model folder")
    parser.add_argument("--threshold", type=float,
                        help="decision threshold on the cosine score (default: the model's "
                        f"verification_threshold, else {DEFAULT_THRESHOLD})")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        check_model_folder(args.model)
        for path in (args.first, args.second):
            if not Path(path).is_file():
                raise CommandError(f"audio file '{path}' does not exist")
        model = load_model(args.model, "speaker", args.device)
        threshold = args.threshold
        if threshold is None:
            threshold = float(getattr(model.hparams, "verification_threshold", DEFAULT_THRESHOLD))
        first, second = (read_audio(model, p).unsqueeze(0) for p in (args.first, args.second))
        score, same = model.verify_batch(first, second, threshold=threshold)
    except CommandError as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    score, same = float(score.reshape(-1)[0]), bool(same.reshape(-1)[0])
    print(f"score: {score:.6f}")
    print(f"decision: {'same speaker' if same else 'different speakers'} (threshold {threshold:.6f})")
    return 0


def embed(argv=None):
    """``xmkd-embed``: one embedding per wav under a folder -> .npy + index file."""
    parser = argparse.ArgumentParser(
        prog="xmkd-embed",
        description="Embed every .wav under a folder (recursive, sorted). Writes OUT (.npy, one row "
        "per file) and OUT with .index.txt (the files' paths relative to FOLDER, one per row).",
    )
    parser.add_argument("folder")
    parser.add_argument("--model", required=True, help="exported model folder")
    parser.add_argument("--out", required=True, help="embeddings file, e.g. emb.npy")
    parser.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int, default=16,
                        help="files per forward pass; shorter files are zero-padded and masked (default 16)")
    parser.add_argument("--normalize", action="store_true",
                        help="subtract the model's mean training embedding (mean_var_norm_emb)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".npy":
        parser.error(f"--out '{args.out}' must end in .npy")
    if args.batch_size < 1:
        parser.error("--batch_size must be at least 1")
    try:
        check_model_folder(args.model)
        wavs = find_wavs(args.folder)
        model = load_model(args.model, "classifier", args.device)
        embeddings = _embed_files(model, wavs, args.batch_size, args.normalize)
    except CommandError as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    index = out.with_suffix(".index.txt")
    root = Path(args.folder)
    atomic_write(str(out), lambda tmp: _save_npy(tmp, embeddings))
    lines = "".join(p.relative_to(root).as_posix() + "\n" for p in wavs)
    atomic_write(str(index), lambda tmp: Path(tmp).write_text(lines, encoding="utf-8"))
    print(f"{len(wavs)} embeddings of size {embeddings.shape[1]} -> {out} (index: {index})")
    return 0


def _save_npy(path, array):
    with open(path, "wb") as handle:  # a handle: np.save would append .npy to a name
        np.save(handle, array)


def _embed_files(model, wavs, batch_size, normalize):
    import torch
    from tqdm import tqdm

    rows = []
    with tqdm(total=len(wavs), desc="embedding", unit="file") as bar:
        for first in range(0, len(wavs), batch_size):
            signals = [read_audio(model, p) for p in wavs[first : first + batch_size]]
            longest = max(s.shape[0] for s in signals)
            batch = torch.zeros(len(signals), longest)
            for i, signal in enumerate(signals):
                batch[i, : signal.shape[0]] = signal.cpu()
            lens = torch.tensor([s.shape[0] / longest for s in signals])
            with torch.no_grad():
                emb = model.encode_batch(batch, lens, normalize=normalize)
            rows.append(emb.reshape(len(signals), -1).float().cpu().numpy())
            bar.update(len(signals))
    return np.concatenate(rows).astype(np.float32)


def main(argv=None):
    """``python -m speechbrain_xmkd.cli verify|embed ...``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = {"verify": verify, "embed": embed}
    if not argv or argv[0] not in commands:
        print("usage: python -m speechbrain_xmkd.cli {verify,embed} ...", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
