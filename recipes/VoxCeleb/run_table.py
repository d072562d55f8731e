#!/usr/bin/env python3
"""Runs every row of one of the paper's speaker tables and joins the results.

Each row of ``tables.yaml`` is a set of command-line overrides on one
training yaml; this script runs ``train.py`` once per row (in its own
process, so a failed row does not stop the others), each in
``<output_root>/<table>/<row>``, then writes ``<output_root>/<table>.md``
with the verification results every run left in its ``results.json``.
Rows whose ``results.json`` already exists are skipped (rerun = resume).

    python recipes/VoxCeleb/run_table.py table1 recipes/VoxCeleb/hparams/resnet34_xmkd.yaml \
        --output_root results/table1 -- --data_folder /data/vox2 --voxceleb1_folder /data/vox1 \
        --teacher_weights ir50.pth
    python recipes/VoxCeleb/run_table.py table1 ... --dry-run     # print the commands
    python recipes/VoxCeleb/run_table.py table1 ... --launcher "torchrun --nproc_per_node=4"

Everything after ``--`` is passed to every row (data paths, devices,
precision, tiny-run overrides).
"""

import argparse
import json
import sys
from pathlib import Path

from speechbrain_xmkd.tables import (
    add_runner_arguments,
    load_tables,
    run_row,
    select_rows,
    slug,
    split_passthrough,
    train_command,
    yaml_value,
)

HERE = Path(__file__).resolve().parent


def row_command(hparams_file, row, output_folder, extra_args, launcher, substitutions):
    """The command line that trains one row (``{placeholders}`` filled from ``substitutions``)."""
    overrides = {key: str(value).format(**substitutions) for key, value in row["overrides"].items()}
    return train_command(HERE / "train.py", hparams_file, output_folder, overrides, extra_args, launcher)


def results_row(name, results_file, trial_set):
    """One markdown row (EER %, minDCF) from a run's results.json."""
    if not results_file.exists():
        return f"| {name} | not run | |"
    results = json.loads(results_file.read_text())
    if trial_set not in results:
        return f"| {name} | no '{trial_set}' results | |"
    clean = results[trial_set]["clean"]
    return f"| {name} | {100 * clean['eer']:.2f}% | {clean['min_dcf']:.3f} |"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_runner_arguments(parser, default_root="results/tables")
    parser.add_argument("--trial_set", default=None, help="results.json key (default: the yaml's trial_set_name)")
    parser.add_argument("--weak_teacher_folder", default="", help="train_face_teacher.py output (Table 2's weak teacher)")
    argv, extra = split_passthrough(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    table, rows = select_rows(parser, load_tables(HERE / "tables.yaml"), args.table, args.rows)

    needs_weak = any("{weak_teacher_folder}" in str(r["overrides"].values()) for r in rows)
    substitutions = {"weak_teacher_folder": args.weak_teacher_folder, "weak_teacher_dim": ""}
    if needs_weak and not args.dry_run:
        info = Path(args.weak_teacher_folder or ".") / "face_teacher.json"
        if not args.weak_teacher_folder or not info.is_file():
            parser.error(f"{args.table} has weak-teacher rows: pass --weak_teacher_folder <train_face_teacher.py "
                         f"output folder> (no {info})")
        substitutions["weak_teacher_dim"] = json.loads(info.read_text())["kwargs"]["embedding_dim"]
    trial_set = args.trial_set or yaml_value(args.hparams_file, "trial_set_name") or "trials"

    root = Path(args.output_root) / args.table
    failed = []
    for row in rows:
        folder = root / slug(row["name"])
        command = row_command(args.hparams_file, row, folder, extra, args.launcher, substitutions)
        if not run_row(row["name"], folder, command, args.dry_run):
            failed.append(row["name"])

    lines = [f"## {table['title']}", "", f"| method | EER ({trial_set}) | minDCF |", "|---|---|---|"]
    lines += [results_row(r["name"], root / slug(r["name"]) / "results.json", trial_set) for r in rows]
    report = "\n".join(lines) + "\n"
    if not args.dry_run:
        (Path(args.output_root) / f"{args.table}.md").write_text(report)
        print(report)
    if failed:
        print(f"failed rows: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
