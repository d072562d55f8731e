"""Seeded per-class subsets of a training CSV (the paper's data-volume experiments).

Table 2 trains on 25% of VoxCeleb2 and Fig. 9 on 25/50/100% of each image
class. Here a fraction keeps, for every class, a seeded share of its groups
(videos for speakers, so no video is split between kept and dropped rows;
single rows for images), at least one group per class, so every class
stays learnable and the classifier keeps its size.
"""

import csv
import math
import random
from collections import defaultdict
from pathlib import Path


def session_of(row):
    """Group key of a VoxCeleb row: ``<spk>--<video>--<utt>...`` -> ``<spk>--<video>``."""
    parts = row["ID"].split("--")
    return "--".join(parts[:2]) if len(parts) >= 3 else row["ID"]


def fraction_per_class(csv_in, csv_out, fraction, seed=1234, class_key="spk_id", group_of=session_of):
    """Writes the rows of ``csv_in`` kept by a seeded per-class fraction.

    Arguments
    ---------
    csv_in, csv_out : str
        Source and destination CSV files (same header).
    fraction : float
        Share in (0, 1] of each class's groups to keep (rounded up).
    seed : int
        Seed of the choice: the same seed keeps the same groups.
    class_key : str
        Column holding the class (``spk_id``, ``label``).
    group_of : callable
        ``row -> group key``: rows of one group are kept or dropped together.

    Returns
    -------
    dict
        ``{"rows": kept rows, "groups": kept groups, "classes": classes}``.

    Example
    -------
    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> src, dst = os.path.join(folder, "a.csv"), os.path.join(folder, "b.csv")
    >>> rows = ["ID,spk_id"] + [f"s{s}--v{v}--{u},s{s}" for s in range(2) for v in range(4) for u in range(2)]
    >>> _ = open(src, "w").write("\\n".join(rows) + "\\n")
    >>> fraction_per_class(src, dst, 0.25)
    {'rows': 4, 'groups': 2, 'classes': 2}
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    with open(csv_in, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames
        rows = list(reader)
    if not rows:
        raise ValueError(f"{csv_in}: no rows")
    if class_key not in header:
        raise ValueError(f"{csv_in}: missing column '{class_key}'")
    groups = defaultdict(set)
    for row in rows:
        groups[row[class_key]].add(group_of(row))
    rng = random.Random(seed)
    kept = set()
    for label in sorted(groups):
        members = sorted(groups[label])
        kept.update(rng.sample(members, max(1, math.ceil(fraction * len(members)))))
    selected = [row for row in rows if group_of(row) in kept]
    Path(csv_out).parent.mkdir(parents=True, exist_ok=True)
    with open(csv_out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(selected)
    return {"rows": len(selected), "groups": len(kept), "classes": len(groups)}
