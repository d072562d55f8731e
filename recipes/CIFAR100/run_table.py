#!/usr/bin/env python3
"""Runs every row of one of the paper's image tables and joins the results.

Each row of ``tables.yaml`` is a set of command-line overrides on one
training yaml; this script runs ``train.py`` once per distinct run (in its
own process, so a failed row does not stop the others), then writes
``<output_root>/<table>.md`` with top-1, top-5 and matching accuracy from
every run's ``results.json``. A run's folder is named by its overrides,
leaving out those equal to the yaml's own value, so rows that repeat a run
(Table 8 reuses Table 7; alpha 0.6 is "Ours (feature)") share one folder
and are trained once; a folder that already has ``results.json`` is skipped
(rerun = resume). Same command shape as ``recipes/VoxCeleb/run_table.py``; the shared
pieces live in :mod:`speechbrain_xmkd.tables`.

    python recipes/CIFAR100/run_table.py table7 recipes/CIFAR100/hparams/cifar100_resnet18_xmkd.yaml \
        --output_root results/cifar100_r18 -- --data_folder /data/cifar100
    python recipes/CIFAR100/run_table.py table7 ... --dry-run     # print the commands

Everything after ``--`` is passed to every row (data paths, teacher,
devices, precision, tiny-run overrides).
"""

import argparse
import json
import shlex
import sys
from pathlib import Path

from speechbrain_xmkd.tables import (
    add_runner_arguments,
    load_tables as _load_tables,
    run_row,
    select_rows,
    slug,  # noqa: F401  (part of this script's interface, used by the tests)
    split_passthrough,
    train_command,
    yaml_value,
)

HERE = Path(__file__).resolve().parent

LEADING = ("method", "projection", "quality")


def load_tables(path=HERE / "tables.yaml"):
    """Reads ``tables.yaml``: ``{table: {"title", "hparams", "rows": [{"name", "overrides"}]}}``."""
    return _load_tables(path)


def _same(value, default):
    if default is None:
        return False
    try:
        return float(value) == float(default)
    except (TypeError, ValueError):
        return str(value) == str(default)


def run_overrides(hparams_file, overrides):
    """The row's overrides that differ from the yaml's own values, in a fixed order."""
    keys = [k for k in LEADING if k in overrides] + sorted(k for k in overrides if k not in LEADING)
    return {k: overrides[k] for k in keys if k in LEADING or not _same(overrides[k], yaml_value(hparams_file, k))}


def run_folder(root, hparams_file, overrides):
    """``<root>/<yaml stem>/<method>-<projection>-<quality>[_<key>-<value>...]``."""
    kept = run_overrides(hparams_file, overrides)
    lead = "-".join(str(kept[k]) for k in LEADING if k in kept)
    rest = "_".join(f"{k}-{kept[k]}" for k in kept if k not in LEADING)
    name = lead + (f"_{rest}" if rest else "")
    return Path(root) / Path(hparams_file).stem / name.replace("/", "_")


def row_command(hparams_file, overrides, output_folder, extra_args, launcher):
    """The command line that trains one run."""
    return train_command(HERE / "train.py", hparams_file, output_folder, overrides, extra_args, launcher)


def results_row(name, results_file):
    """One markdown row (top-1 %, top-5 %, matching %) from a run's results.json."""
    if not results_file.exists():
        return f"| {name} | not run | | |"
    results = json.loads(results_file.read_text())
    matching = results["matching"]["accuracy"]
    shown = "n/a" if matching is None else f"{100 * matching:.2f}%"
    return f"| {name} | {100 * results['top1']:.2f}% | {100 * results['top5']:.2f}% | {shown} |"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_runner_arguments(parser, default_root="results/image_tables")
    argv, extra = split_passthrough(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    table, rows = select_rows(parser, load_tables(), args.table, args.rows)
    if table.get("hparams") and Path(args.hparams_file).name not in table["hparams"]:
        print(f"note: the paper ran {args.table} with {', '.join(table['hparams'])}", file=sys.stderr)

    failed, done = [], set()
    for row in rows:
        folder = run_folder(args.output_root, args.hparams_file, row["overrides"])
        command = row_command(
            args.hparams_file, run_overrides(args.hparams_file, row["overrides"]), folder, extra, args.launcher
        )
        if folder in done:  # a row that repeats a run already trained here
            print(shlex.join(command), flush=True)
            continue
        done.add(folder)
        if not run_row(row["name"], folder, command, args.dry_run):
            failed.append(row["name"])

    lines = [f"## {table['title']}", "", f"Runs of `{Path(args.hparams_file).name}`.", ""]
    lines += ["| method | top-1 | top-5 | matching |", "|---|---|---|---|"]
    lines += [
        results_row(r["name"], run_folder(args.output_root, args.hparams_file, r["overrides"]) / "results.json")
        for r in rows
    ]
    chance = None
    for r in rows:
        path = run_folder(args.output_root, args.hparams_file, r["overrides"]) / "results.json"
        if path.exists():
            chance = json.loads(path.read_text())["matching"]["chance"]
            break
    if chance is not None:
        lines.append(f"| chance (matching) | | | {100 * chance:.2f}% |")
    report = "\n".join(lines) + "\n"
    if not args.dry_run:
        Path(args.output_root).mkdir(parents=True, exist_ok=True)
        (Path(args.output_root) / f"{args.table}.md").write_text(report)
        print(report)
    if failed:
        print(f"failed rows: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
