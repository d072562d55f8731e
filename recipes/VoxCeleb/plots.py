#!/usr/bin/env python3
"""Figures of evaluated speaker runs (PNG, matplotlib): DET curves, score histograms, t-SNE, training curves.

    python recipes/VoxCeleb/plots.py det RUN1 RUN2 --names base,ours --out det.png
    python recipes/VoxCeleb/plots.py hist RUN --condition noise5 --out hist.png
    python recipes/VoxCeleb/plots.py tsne RUN --out tsne.png        # Fig. 8
    python recipes/VoxCeleb/plots.py curves RUN1 RUN2 --out curves.png  # Fig. 6
    python recipes/VoxCeleb/plots.py all RUN1 RUN2 --out_folder plots/  # all four

``det`` and ``hist`` read ``RUN/scores/<set>_<condition>.txt`` (default
set: VoxCeleb1-O, else the run's first set; default condition: clean).
``tsne`` reads the samples evaluate.py saved under
``RUN/embeddings/<checkpoint>/crossmodal_samples.pt``: face (teacher),
projected face and speech embeddings of up to 200 test samples, shaded by
gender, the attribute both modalities share. ``curves`` reads
``RUN/train_log.txt``: training accuracy (1 - train ErrorRate, dashed) and
the per-epoch test EER (``valid EER``, solid; logged when the yaml's
``epoch_eer_every`` > 0).
"""

import argparse
import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import norm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from speechbrain_xmkd.metrics import det_curve, eer  # noqa: E402
from speechbrain_xmkd.reports import primary_set  # noqa: E402
from speechbrain_xmkd.tsne import tsne  # noqa: E402
from speechbrain_xmkd.verification import read_scores  # noqa: E402

DET_TICKS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4]


def _results(run):
    path = Path(run) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"'{path}' does not exist: run evaluate.py for '{run}' first")
    return json.loads(path.read_text(encoding="utf-8"))


def _scores(run, trial_set=None, condition="clean"):
    trial_set = trial_set or primary_set(_results(run))
    path = Path(run) / "scores" / f"{trial_set}_{condition}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"scores file '{path}' does not exist (evaluate.py writes scores/<set>_<condition>.txt)")
    labels, scores = read_scores(path)
    return scores[labels == 1], scores[labels == 0], trial_set


def plot_det(runs, names, out, trial_set=None, condition="clean"):
    """DET curves of several runs on normal-deviate axes labelled in %."""
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    limit = norm.ppf([DET_TICKS[0] / 2, 0.5])
    for run, name in zip(runs, names):
        target, nontarget, used_set = _scores(run, trial_set, condition)
        p_fa, p_miss, _ = det_curve(target, nontarget)
        clip = lambda p: np.clip(p, DET_TICKS[0] / 2, 1 - DET_TICKS[0] / 2)  # noqa: E731
        value, _ = eer(target, nontarget)
        ax.plot(norm.ppf(clip(p_fa)), norm.ppf(clip(p_miss)), label=f"{name} (EER {100 * value:.2f}%)")
    ax.plot(limit, limit, color="grey", linewidth=0.5, linestyle=":")
    ticks = norm.ppf(DET_TICKS)
    labels = [f"{100 * t:g}" for t in DET_TICKS]
    ax.set_xticks(ticks, labels)
    ax.set_yticks(ticks, labels)
    ax.set_xlim(*limit)
    ax.set_ylim(*limit)
    ax.set_xlabel("False acceptance rate (%)")
    ax.set_ylabel("False rejection rate (%)")
    ax.set_title(f"DET: {used_set}, {condition}")
    ax.grid(True, linewidth=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, out)


def plot_histogram(run, out, trial_set=None, condition="clean", name=None):
    """Target and non-target score histograms of one run."""
    target, nontarget, used_set = _scores(run, trial_set, condition)
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(min(target.min(), nontarget.min()), max(target.max(), nontarget.max()), 60)
    ax.hist(nontarget, bins=bins, alpha=0.6, density=True, label=f"non-target ({len(nontarget)})")
    ax.hist(target, bins=bins, alpha=0.6, density=True, label=f"target ({len(target)})")
    ax.set_xlabel("score (mean cosine over crop pairs)")
    ax.set_ylabel("density (1 / score unit)")
    ax.set_title(f"{name or Path(run).name}: {used_set}, {condition}")
    ax.legend()
    return _save(fig, out)


def crossmodal_samples(run):
    """The samples evaluate.py saved for Fig. 8 (newest checkpoint folder that has them)."""
    found = sorted((Path(run) / "embeddings").glob("*/crossmodal_samples.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(
            f"no embeddings/*/crossmodal_samples.pt in '{run}': run evaluate.py with matching enabled "
            "(matching_set and matching_faces_folder set, a distilled run)"
        )
    return torch.load(found[-1], map_location="cpu", weights_only=True)


def _unit(x):
    return torch.nn.functional.normalize(x.float(), dim=1).numpy()


def _pad(x, width):
    return np.pad(x, ((0, 0), (0, width - x.shape[1])))


def plot_tsne(run, out, n_iter=1000, seed=0):
    """t-SNE of face, projected face and speech embeddings, dark/light by gender (Fig. 8)."""
    samples = crossmodal_samples(run)
    note = ""
    face = samples["face_in_student_width"]
    if face is None:
        face = samples["face"]
        note = " (face zero-padded to a common width)"
    groups = [("face (teacher)", face, "Reds"), ("speech (student)", samples["speech"], "Blues")]
    if samples.get("projected_face") is not None:
        groups.insert(1, ("projected face (head)", samples["projected_face"], "Greens"))
    arrays = [_unit(x) for _, x, _ in groups]
    width = max(a.shape[1] for a in arrays)
    points = tsne(np.concatenate([_pad(a, width) for a in arrays]), n_iter=n_iter, seed=seed)
    genders = samples["gender"]
    kinds = sorted(set(genders))
    fig, ax = plt.subplots(figsize=(6.5, 6))
    start = 0
    for (label, _, cmap), array in zip(groups, arrays):
        part = points[start : start + len(array)]
        start += len(array)
        colours = plt.get_cmap(cmap)
        for k, kind in enumerate(kinds):
            mask = np.array([g == kind for g in genders])
            shade = colours(0.85 if k == 0 else 0.45)
            ax.scatter(part[mask, 0], part[mask, 1], s=10, color=shade, label=f"{label}, gender {kind}")
    ax.set_xlabel("t-SNE dimension 1 (arbitrary units)")
    ax.set_ylabel("t-SNE dimension 2 (arbitrary units)")
    ax.set_title(f"{Path(run).name}: {len(genders)} test samples, unit-normalised{note}", fontsize=9)
    ax.legend(fontsize=7, markerscale=1.5)
    return _save(fig, out)


_STAT = re.compile(r"^\s*(.+?):\s*([-+0-9.eE]+|nan|inf)\s*$")


def read_train_log(path):
    """``epoch -> {"train ErrorRate": ..., "valid EER": ...}`` from a SpeechBrain train_log.txt.

    The last line of an epoch wins (a resumed run may log it again).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"train log '{path}' does not exist")
    epochs = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("epoch:"):
            continue
        stats, epoch = {}, None
        for section in line.split(" - "):
            for item in section.split(", "):
                match = _STAT.match(item)
                if match:
                    stats[match.group(1)] = float(match.group(2))
        epoch = int(stats.pop("epoch"))
        epochs[epoch] = stats
    return epochs


def plot_curves(runs, names, out):
    """Training accuracy (dashed) and test EER (solid) per epoch (Fig. 6)."""
    fig, left = plt.subplots(figsize=(7, 4.5))
    right = left.twinx()
    missing = []
    for k, (run, name) in enumerate(zip(runs, names)):
        log = read_train_log(Path(run) / "train_log.txt")
        epochs = sorted(log)
        if not epochs:
            raise ValueError(f"'{Path(run) / 'train_log.txt'}' has no epoch line")
        colour = f"C{k}"
        # Logs written before train ErrorRate was logged: the dev-set accuracy, labelled as such.
        source, label = ("train ErrorRate", "training") if "train ErrorRate" in log[epochs[-1]] else (
            "valid ErrorRate", "dev-set")
        accuracy = [100 * (1 - log[e][source]) if source in log[e] else np.nan for e in epochs]
        left.plot(epochs, accuracy, linestyle="--", color=colour, label=f"{name}: {label} accuracy")
        eers = [log[e].get("valid EER", np.nan) for e in epochs]
        if np.all(np.isnan(eers)):
            missing.append(name)
        else:
            right.plot(epochs, eers, linestyle="-", marker="o", markersize=3, color=colour, label=f"{name}: test EER")
    if missing:
        left.set_title(f"no per-epoch EER logged for {', '.join(missing)} (yaml: epoch_eer_every > 0)", fontsize=8)
    left.set_xlabel("epoch")
    left.set_ylabel("accuracy (%, dashed)")
    right.set_ylabel("test EER (%, solid)")
    lines = left.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    left.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="center right")
    left.grid(True, linewidth=0.3)
    return _save(fig, out)


def _save(fig, out):
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f"wrote {out}")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["det", "hist", "tsne", "curves", "all"])
    parser.add_argument("runs", nargs="+", help="output folders of evaluated runs")
    parser.add_argument("--names", default="", help="comma-separated legend names (default: folder names)")
    parser.add_argument("--set", dest="trial_set", default=None, help="trial set (default: vox1_o or the first)")
    parser.add_argument("--condition", default="clean", help="clean or noise<delta_db>, e.g. noise5")
    parser.add_argument("--out", default=None, help="PNG file (default: <first run>/plots/<kind>.png)")
    parser.add_argument("--out_folder", default=None, help="folder for 'all' (default: <first run>/plots)")
    parser.add_argument("--tsne_iter", type=int, default=1000)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.names.split(",")] if args.names else [Path(r).name for r in args.runs]
    if len(names) != len(args.runs):
        parser.error(f"--names has {len(names)} names for {len(args.runs)} runs")
    folder = Path(args.out_folder or Path(args.runs[0]) / "plots")
    kinds = ["det", "hist", "tsne", "curves"] if args.kind == "all" else [args.kind]
    written = []
    try:
        for kind in kinds:
            out = Path(args.out) if args.out and args.kind != "all" else folder / f"{kind}.png"
            if kind == "det":
                written.append(plot_det(args.runs, names, out, args.trial_set, args.condition))
            elif kind == "hist":
                for run, name in zip(args.runs, names):
                    target = out if len(args.runs) == 1 else out.with_name(f"{out.stem}_{name}.png")
                    written.append(plot_histogram(run, target, args.trial_set, args.condition, name))
            elif kind == "tsne":
                for run, name in zip(args.runs, names):
                    target = out if len(args.runs) == 1 else out.with_name(f"{out.stem}_{name}.png")
                    try:
                        written.append(plot_tsne(run, target, n_iter=args.tsne_iter))
                    except FileNotFoundError as err:
                        if args.kind != "all":
                            raise
                        # 'all' over several runs: a plain baseline has no teacher side.
                        print(f"t-SNE skipped for {name}: {err}", file=sys.stderr)
            else:
                written.append(plot_curves(args.runs, names, out))
    except (FileNotFoundError, KeyError, ValueError) as err:
        parser.error(str(err))
    return written


if __name__ == "__main__":
    main()
