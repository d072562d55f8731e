"""Shared pieces of the paper-table runners (``recipes/*/run_table.py``).

A table is a list of rows, each a set of command-line overrides on one
training yaml; a runner trains every row in its own process and joins the
results. The recipes keep what differs (folder naming, result columns).
"""

import re
import shlex
import subprocess
import sys

import yaml


def load_tables(path):
    """Reads a ``tables.yaml``: ``{table: {"title": str, "rows": [{"name", "overrides"}]}}``."""
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def slug(name):
    """A folder name for a row.

    Example
    -------
    >>> slug("Ours (feature+quality)")
    'ours_feature_quality'
    """
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def yaml_value(hparams_file, key):
    """A top-level scalar of a hyperpyyaml file, read without building it (None if absent)."""
    pattern = re.compile(rf"^{re.escape(key)}:\s*([^\s#]+)")
    with open(hparams_file, encoding="utf-8") as handle:
        for line in handle:
            match = pattern.match(line)
            if match:
                return match.group(1)
    return None


def split_passthrough(argv):
    """Splits ``argv`` at ``--``: the runner's own arguments, and those passed to every row.

    Example
    -------
    >>> split_passthrough(["table1", "x.yaml", "--", "--device", "cuda:0"])
    (['table1', 'x.yaml'], ['--device', 'cuda:0'])
    """
    if "--" not in argv:
        return list(argv), []
    cut = argv.index("--")
    return list(argv[:cut]), list(argv[cut + 1 :])


def add_runner_arguments(parser, default_root):
    """The arguments every table runner takes."""
    parser.add_argument("table", help="a table of tables.yaml, e.g. table1")
    parser.add_argument("hparams_file")
    parser.add_argument("--output_root", default=default_root)
    parser.add_argument("--launcher", default="", help='e.g. "torchrun --nproc_per_node=4"')
    parser.add_argument("--rows", default="", help="comma-separated row numbers (1-based) to run")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")


def select_rows(parser, tables, table_name, rows_arg):
    """Returns ``(table, rows)``; an unknown table is a parser error listing the valid ones."""
    if table_name not in tables:
        parser.error(f"unknown table '{table_name}'; valid: {', '.join(tables)}")
    table = tables[table_name]
    rows = table["rows"]
    if rows_arg:
        rows = [rows[int(i) - 1] for i in rows_arg.split(",")]
    return table, rows


def train_command(train_script, hparams_file, output_folder, overrides, extra_args, launcher):
    """The command line that trains one row: ``[launcher] train.py yaml --key=value ... extra``."""
    command = shlex.split(launcher) if launcher else [sys.executable]
    command += [str(train_script), str(hparams_file), f"--output_folder={output_folder}"]
    command += [f"--{key}={value}" for key, value in overrides.items()]
    return command + list(extra_args)


def run_row(name, folder, command, dry_run):
    """Prints and (unless a dry run or already done) runs one row; returns False if it failed."""
    print(shlex.join(command), flush=True)
    if dry_run:
        return True
    if (folder / "results.json").exists():
        print(f"  {name}: results.json exists, skipped", flush=True)
        return True
    return subprocess.run(command).returncode == 0
