"""Markdown tables from ``results.json``: the layouts of the paper's Tables 1, 3 and 4.

Table 1: EER (O), minDCF (O), EER (H), EER at ``delta_db`` = 15 / 10 / 5
(noise on VoxCeleb1-O). When a run has no VoxCeleb1-O results (the
embedded corpus), its first trial set takes the place of O. Other sets
(VoxCeleb1-E, CN-Celeb as in Table 3) get their own table, and face-voice
matching (Table 4) too. :func:`compare_markdown` puts several runs in the
same tables with the best value of each column in bold.

Authors
 * speechbrain_xmkd contributors
"""

import math

__all__ = ["primary_set", "table1_columns", "results_markdown", "compare_markdown"]

SET_LABELS = {"vox1_o": "O", "vox1_e": "E", "vox1_h": "H", "cnceleb": "CN-Celeb"}
MATCHING_COLUMNS = (("AF_O", "A-F (O)"), ("FA_O", "F-A (O)"), ("AF_H", "A-F (H)"), ("FA_H", "F-A (H)"))


def _sets(results):
    return [name for name in results if name != "matching" and isinstance(results[name], dict)]


def primary_set(results):
    """``vox1_o`` when present, otherwise the first trial set in the file.

    Example
    -------
    >>> primary_set({"matching": {}, "synthetic": {"clean": {}}})
    'synthetic'
    """
    names = _sets(results)
    if "vox1_o" in names:
        return "vox1_o"
    return names[0] if names else None


def _label(name):
    return SET_LABELS.get(name, name)


def table1_columns(runs):
    """Columns ``(header, set, condition, metric, lower_is_better)`` of the Table 1 layout.

    Arguments
    ---------
    runs : list of dict
        Parsed ``results.json`` files (the union of their columns is used).

    Example
    -------
    >>> r = {"synthetic": {"clean": {}, "noise15": {"delta_db": 15.0}, "noise5": {"delta_db": 5.0}}}
    >>> [c[0] for c in table1_columns([r])]
    ['EER (synthetic)', 'minDCF (synthetic)', 'EER (Δdb = 15)', 'EER (Δdb = 5)']
    """
    primary = next((primary_set(r) for r in runs if primary_set(r) == "vox1_o"), None)
    primary = primary or next((primary_set(r) for r in runs if primary_set(r)), None)
    if primary is None:
        return []
    label = _label(primary)
    columns = [(f"EER ({label})", primary, "clean", "eer_percent", True),
               (f"minDCF ({label})", primary, "clean", "min_dcf", True)]
    if any("vox1_h" in r for r in runs):
        columns.append(("EER (H)", "vox1_h", "clean", "eer_percent", True))
    deltas = {}
    for r in runs:
        for condition, entry in r.get(primary, {}).items():
            if condition != "clean" and "delta_db" in entry:
                deltas[condition] = entry["delta_db"]
    for condition, delta in sorted(deltas.items(), key=lambda item: -item[1]):
        columns.append((f"EER (Δdb = {delta:g})", primary, condition, "eer_percent", True))
    return columns


def _other_columns(runs, primary_columns):
    used = {c[1] for c in primary_columns}
    names = []
    for r in runs:
        names += [n for n in _sets(r) if n not in used and n not in names]
    columns = []
    for name in names:
        columns += [(f"EER ({_label(name)})", name, "clean", "eer_percent", True),
                    (f"minDCF ({_label(name)})", name, "clean", "min_dcf", True)]
    return columns


def _matching_columns(runs):
    if not any("matching" in r for r in runs):
        return []
    return [(header, "matching", key, "accuracy_percent", False) for key, header in MATCHING_COLUMNS]


def _value(results, column):
    _, name, condition, metric, _ = column
    entry = results.get(name, {}).get(condition, {})
    value = entry.get(metric) if isinstance(entry, dict) else None
    if value is None and metric == "eer_percent" and isinstance(entry, dict) and "eer" in entry:
        value = 100.0 * entry["eer"]  # results.json written before eer_percent existed
    return value


def _format(metric, value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if metric == "min_dcf":
        return f"{value:.3f}"
    return f"{value:.2f}%"


def _table(names, runs, columns, first_header, fixed_rows=0):
    """Rows after the first ``fixed_rows`` (e.g. chance) compete for bold, when there are several."""
    lines = ["| " + " | ".join([first_header] + [c[0] for c in columns]) + " |",
             "|" + "---|" * (len(columns) + 1)]
    best = {}
    if len(runs) - fixed_rows > 1:
        for c in columns:
            values = [round(v, 6) for v in (_value(r, c) for r in runs[fixed_rows:]) if v is not None]
            if values:
                best[c] = min(values) if c[4] else max(values)
    for row, (name, r) in enumerate(zip(names, runs)):
        cells = [name]
        for c in columns:
            value = _value(r, c)
            text = _format(c[3], value)
            if row >= fixed_rows and value is not None and c in best and round(value, 6) == best[c]:
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def compare_markdown(names, runs, title=None):
    """Markdown tables of several runs (Table 1 layout, other sets, Table 4), best value per column in bold.

    Arguments
    ---------
    names : list of str
        Row names.
    runs : list of dict
        Their parsed ``results.json``.
    title : str, optional
        A heading.

    Returns
    -------
    str

    Example
    -------
    >>> a = {"s": {"clean": {"eer_percent": 5.0, "min_dcf": 0.5}}}
    >>> b = {"s": {"clean": {"eer_percent": 4.0, "min_dcf": 0.6}}}
    >>> print(compare_markdown(["a", "b"], [a, b]))
    | method | EER (s) | minDCF (s) |
    |---|---|---|
    | a | 5.00% | **0.500** |
    | b | **4.00%** | 0.600 |
    """
    lines = [f"# {title}", ""] if title else []
    primary = table1_columns(runs)
    lines += _table(names, runs, primary, "method")
    others = _other_columns(runs, primary)
    if others:
        lines += ["", "Other trial sets (clean):", ""] + _table(names, runs, others, "method")
    matching = _matching_columns(runs)
    if matching:
        chance = {"matching": {key: {"accuracy_percent": 50.0} for key, _ in MATCHING_COLUMNS}}
        lines += ["", "Face-voice matching accuracy (Table 4 layout):", ""]
        lines += _table(["chance"] + list(names), [chance] + list(runs), matching, "method", fixed_rows=1)
        notes = [f"{n}: {r['matching']['note']}" for n, r in zip(names, runs) if "note" in r.get("matching", {})]
        lines += [f"- {note}" for note in notes]
    return "\n".join(lines)


def results_markdown(results, name="this run"):
    """``results.md`` of one run: the same tables with one row, plus trial counts.

    Example
    -------
    >>> print(results_markdown({"s": {"clean": {"eer_percent": 5.0, "min_dcf": 0.5, "trials": 10}}}))
    | method | EER (s) | minDCF (s) |
    |---|---|---|
    | this run | 5.00% | 0.500 |
    <BLANKLINE>
    Trials: s clean 10.
    """
    text = compare_markdown([name], [results])
    counts = [
        f"{s} {c} {e['trials']}"
        for s in _sets(results)
        for c, e in results[s].items()
        if isinstance(e, dict) and "trials" in e
    ]
    if counts:
        text += "\n\nTrials: " + ", ".join(counts) + "."
    return text
