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
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def load_tables(path=HERE / "tables.yaml"):
    """Reads ``tables.yaml``: ``{table: {"title": str, "rows": [{"name", "overrides"}]}}``."""
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def slug(name):
    """A folder name for a row: ``"Ours (feature+quality)"`` -> ``ours_feature_quality``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def row_command(hparams_file, row, output_folder, extra_args, launcher, substitutions):
    """The command line that trains one row."""
    command = shlex.split(launcher) if launcher else [sys.executable]
    command += [str(HERE / "train.py"), str(hparams_file), f"--output_folder={output_folder}"]
    for key, value in row["overrides"].items():
        value = str(value).format(**substitutions)
        command.append(f"--{key}={value}")
    return command + list(extra_args)


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
    parser.add_argument("table", help="a table of tables.yaml, e.g. table1")
    parser.add_argument("hparams_file")
    parser.add_argument("--output_root", default="results/tables")
    parser.add_argument("--trial_set", default=None, help="results.json key (default: the yaml's trial_set_name)")
    parser.add_argument("--launcher", default="", help='e.g. "torchrun --nproc_per_node=4"')
    parser.add_argument("--weak_teacher_folder", default="", help="train_face_teacher.py output (Table 2's weak teacher)")
    parser.add_argument("--rows", default="", help="comma-separated row numbers (1-based) to run")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    argv = sys.argv[1:] if argv is None else argv
    extra = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    args = parser.parse_args(argv)

    tables = load_tables()
    if args.table not in tables:
        parser.error(f"unknown table '{args.table}'; valid: {', '.join(tables)}")
    table = tables[args.table]
    rows = table["rows"]
    if args.rows:
        rows = [rows[int(i) - 1] for i in args.rows.split(",")]
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
        command = row_command(
            args.hparams_file, row, folder, extra, args.launcher,
            substitutions,
        )
        print(shlex.join(command), flush=True)
        if args.dry_run:
            continue
        if (folder / "results.json").exists():
            print(f"  {row['name']}: results.json exists, skipped", flush=True)
            continue
        if subprocess.run(command).returncode != 0:
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


def yaml_value(hparams_file, key):
    """A top-level scalar of a hyperpyyaml file, read without building it."""
    pattern = re.compile(rf"^{re.escape(key)}:\s*([^\s#]+)")
    with open(hparams_file, encoding="utf-8") as handle:
        for line in handle:
            match = pattern.match(line)
            if match:
                return match.group(1)
    return None


if __name__ == "__main__":
    sys.exit(main())
