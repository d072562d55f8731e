"""Export a training run's student as a SpeechBrain model folder; optionally push it.

    python -m speechbrain_xmkd.export results/synthetic_xmkd/feature-head-teacher/1986 --out model
    python -m speechbrain_xmkd.export RUN --push-to-hub user/name [--private] [--out model]

The folder loads with ``SpeakerRecognition.from_hparams(source="model")``
(see :mod:`speechbrain_xmkd.hub`). Pushing needs a Hugging Face token
(``hf auth login`` or ``HF_TOKEN``); without one nothing is exported.
"""

import argparse
import logging
import sys
import tempfile


def build_parser():
    """The command line of ``python -m speechbrain_xmkd.export``."""
    parser = argparse.ArgumentParser(
        prog="python -m speechbrain_xmkd.export",
        description="Export the student of a training run (best checkpoint) as a model folder "
        "SpeechBrain loads, and optionally upload it to the Hugging Face Hub.",
    )
    parser.add_argument("output_folder", help="training run folder (the recipe's --output_folder)")
    parser.add_argument("--out", help="model folder to write (default with --push-to-hub: a temporary one)")
    parser.add_argument("--push-to-hub", "--push_to_hub", dest="push_to_hub", metavar="REPO_ID",
                        help="upload to this Hub repository, e.g. user/name (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the Hub repository private")
    parser.add_argument("--ckpt-key", "--ckpt_key", dest="ckpt_key",
                        help="CKPT.yaml key to minimise when choosing the checkpoint (default ErrorRate)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    parser.add_argument("--norm-utterances", "--norm_utterances", dest="norm_utterances", type=int,
                        help="speaker runs: training utterances the embedding normaliser is fit on (default 2000)")
    parser.add_argument("--data-folder", "--data_folder", dest="data_folder",
                        help="speaker runs: where the training data is now, if it moved ($data_root of train.csv)")
    parser.add_argument("--train-csv", "--train_csv", dest="train_csv",
                        help="speaker runs: the run's train.csv, if it moved")
    parser.add_argument("--device", help="speaker runs: device for the embeddings (default cpu)")
    parser.add_argument("--image-size", "--image_size", dest="image_size", type=int,
                        help="image runs whose test transform keeps images as they are: input side "
                        "(default: the training crop size)")
    return parser


def main(argv=None):
    """Runs the exporter; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.out and not args.push_to_hub:
        parser.error("nothing to do: give --out DIR, --push-to-hub REPO_ID, or both")
    if args.push_to_hub and "/" not in args.push_to_hub:
        parser.error(f"--push-to-hub '{args.push_to_hub}' must be a repository id 'user/name'")
    logging.basicConfig(level=logging.INFO, format="%(name)s - %(message)s")

    from . import hub

    token = None
    if args.push_to_hub:
        # Checked first: without a token nothing is exported or written.
        try:
            token = hub.require_hub_token()
        except PermissionError as err:
            parser.exit(1, f"{parser.prog}: error: {err}\n")
    options = dict(
        norm_utterances=args.norm_utterances,
        data_folder=args.data_folder,
        train_annotation=args.train_csv,
        device=args.device,
        image_size=args.image_size,
    )
    # Only what was given: each exporter keeps its own defaults.
    kwargs = {name: value for name, value in options.items() if value is not None}
    kwargs.update(ckpt_key=args.ckpt_key, overwrite=args.overwrite)
    try:
        if args.out:
            folder = hub.export_run(args.output_folder, args.out, **kwargs)
            print(f"exported to {folder}")
            if args.push_to_hub:
                print(f"pushed to {hub.push_to_hub(folder, args.push_to_hub, args.private, token)}")
        else:
            with tempfile.TemporaryDirectory() as tmp:
                folder = hub.export_run(args.output_folder, f"{tmp}/model", **kwargs)
                print(f"pushed to {hub.push_to_hub(folder, args.push_to_hub, args.private, token)}")
    except (FileNotFoundError, FileExistsError, ValueError, NotImplementedError) as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
