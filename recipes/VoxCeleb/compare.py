#!/usr/bin/env python3
"""Joins several runs' results.json into one markdown table (the paper's Table 1 layout).

    python recipes/VoxCeleb/compare.py results/baseline results/ours --names "ResNet34,Ours (feature)"
    python recipes/VoxCeleb/compare.py results/tables/table1/* --out table1.md

Columns: EER and minDCF on VoxCeleb1-O (or the first trial set of a run
without VoxCeleb1, e.g. the embedded corpus), EER on VoxCeleb1-H, EER at
each noise level; then other trial sets (VoxCeleb1-E, CN-Celeb) and
face-voice matching (Table 4) when present. The best value of each column
is in bold (lowest error, highest matching accuracy).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from speechbrain_xmkd.reports import compare_markdown  # noqa: E402


def load_runs(folders):
    """Parsed ``results.json`` of each run folder; a missing one is an error naming it."""
    runs = []
    for folder in folders:
        path = Path(folder) / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"'{path}' does not exist: run evaluate.py (or train.py) for that run first")
        try:
            runs.append(json.loads(path.read_text(encoding="utf-8")))
        except ValueError as err:
            raise ValueError(f"'{path}' is not valid json: {err}") from None
    return runs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="output folders of evaluated runs")
    parser.add_argument("--names", default="", help="comma-separated row names (default: folder names)")
    parser.add_argument("--title", default=None, help="a heading above the tables")
    parser.add_argument("--out", default=None, help="also write the markdown to this file")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.names.split(",")] if args.names else [Path(r).name for r in args.runs]
    if len(names) != len(args.runs):
        parser.error(f"--names has {len(names)} names for {len(args.runs)} runs")
    try:
        runs = load_runs(args.runs)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    table = compare_markdown(names, runs, title=args.title)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n", encoding="utf-8")
    print(table)
    return table


if __name__ == "__main__":
    main()
