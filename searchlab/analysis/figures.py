"""The split-BatchNorm study's figures and tables (Merchant et al.; DESIGN.md study 2).

``splitbn_figures(experiment_dir)`` reads what the finished trials left on disk, through
``searchlab.checkpoint`` only (their last metrics and arrays), and writes into EXPERIMENT/figures/:

    lambda.png            (the paper's Fig. 3) test accuracy and uCE against lambda, per split label;
                          labels without a split drawn as horizontal references
    fourier_<label>.png   (Fig. 4) Fourier heatmaps of the main branch (lambda 0), the aux branch
                          (lambda 1) and lambda 0.5, or a plain model's one map; fourier_<label>.npz
                          holds the seed-averaged maps drawn, by array name, for re-plotting
    lowpass.png           (Fig. 5) accuracy against the low-pass width B, per label and branch
    pareto.png, .csv      with ``objectives``: every trial as a point, the Pareto front highlighted
    table.md, table.csv   one row per label: n, then mean and sample std (ddof 1) over its seeds

Trials with the same ``label`` are one row; their seeds are the repeats, and every number shown is
over them (mean, sample std, n). Tables and axes are in percent (all metrics used are fractions).
Only finished trials count: an unfinished one's last metrics are not its final ones.
"""
import csv
import glob
import json
import math
import os
import re
from typing import NamedTuple

import numpy as np

from searchlab import checkpoint
from searchlab.config import DEFAULTS
from searchlab.train import total_epochs

FIGURES_DIR = "figures"
# Headline metrics, at each trial's own lambda: a table column each when some trial reports it.
HEADLINE = ("test_acc_at_best", "uce_at_best", "fourier_err_at_best", "lowpass_mean_acc_at_best")
# Per-lambda metrics of split trials, shown in lambda.png and the table.
PER_LAMBDA = ("test_acc", "uce")
# The predictions drawn in the Fourier and low-pass figures: (name, metric suffix). A split trial
# reports main (lambda 0), aux (lambda 1) and 0.5; a plain one only the unsuffixed array.
SPLIT_HEADS = (("main", "@lam0"), ("aux", "@lam1"), ("λ=0.5", "@lam0.5"))
PLAIN_HEADS = (("", ""),)
HEAD_STYLE = {"main": "-", "aux": "--", "λ=0.5": ":", "": "-"}


class Trial(NamedTuple):
    name: str       # the trial's folder name
    label: str
    config: dict
    metrics: dict   # the last reported metrics
    arrays: dict    # the arrays stored with the newest checkpoint


# ---- reading the experiment -----------------------------------------------------------------

def finished_trials(experiment_dir):
    """The finished trials of an experiment, by folder name, each with its label."""
    found = []
    for trial_dir in sorted(glob.glob(os.path.join(experiment_dir, "*", ""))):
        folder = checkpoint.newest(trial_dir)  # None for non-trial folders such as figures/
        if folder is None:
            continue
        record = checkpoint.read_record(folder)
        if record["epoch"] < total_epochs(record["config"]):
            continue
        found.append(Trial(os.path.basename(trial_dir.rstrip(os.sep)), "", record["config"],
                           record["metrics"], checkpoint.read_arrays(folder)))
    # A trial without a label is named by what sets it apart from the others (its seed aside, since
    # the seeds of one setting are the repeats that must share a row).
    keys = differing_keys([t.config for t in found], exclude=("seed", "label"))
    return [t._replace(label=str(t.config["label"]) if t.config.get("label") is not None
                       else ",".join(f"{k}={show(flat(t.config).get(k))}" for k in keys) or "all")
            for t in found]


def result_rows(path):
    """The reports in a trial's result.json (Tune's JSON lines, one per report, in order); a line
    that does not parse (the last one, while Tune is writing it) is left out."""
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def flat(config, prefix=""):
    """{dotted key: value} of a nested config; lists (pipelines, phases) stay whole values."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def differing_keys(configs, exclude=()):
    """The dotted config keys whose values are not the same in every config, in first-seen order."""
    flats = [flat(c) for c in configs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    return [k for k in keys if k not in exclude
            and len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}) > 1]


def show(value):
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def by_label(trials):
    """{label: [trials]} in order of first appearance, so rows and colours keep their places."""
    groups = {}
    for t in trials:
        groups.setdefault(t.label, []).append(t)
    return groups


def is_split(trials):
    # The per-lambda metrics are what the figures draw, so their presence is what makes a label split.
    return any("@lam" in m for t in trials for m in t.metrics)


def lambdas(trials):
    """The lambdas the label's trials evaluated, in increasing order."""
    found = {float(lam) for t in trials
             for lam in t.config.get("splitbn", {}).get("lambdas", DEFAULTS["splitbn"]["lambdas"])}
    return sorted(found)


# ---- statistics over seeds --------------------------------------------------------------------

def values(trials, metric):
    """The finite values of ``metric`` over the trials that report it (a missing one is skipped)."""
    found = [t.metrics.get(metric) for t in trials]
    return [float(v) for v in found
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def spread(numbers):
    """(mean, sample standard deviation, n); std is nan below two values, mean below one."""
    n = len(numbers)
    mean = float(np.mean(numbers)) if n else math.nan
    return mean, float(np.std(numbers, ddof=1)) if n > 1 else math.nan, n


def seed_mean(trials, name):
    """(mean over seeds, std over seeds, n) of the array ``name``, or None when no trial has it."""
    found = [np.asarray(t.arrays[name], dtype=float) for t in trials if name in t.arrays]
    if not found:
        return None
    stack = np.stack(found)
    return stack.mean(0), (stack.std(0, ddof=1) if len(found) > 1 else np.zeros_like(stack[0])), len(found)


def heads(trials, kind):
    """[(head name, array name, (mean, std, n))] of the arrays ``kind`` the trials hold."""
    def present(candidates):
        found = [(name, array, seed_mean(trials, array))
                 for name, array in ((name, f"{kind}{suffix}_at_best") for name, suffix in candidates)]
        return [head for head in found if head[2] is not None]
    # A split trial also holds the unsuffixed array (at its own lambda): the branches come first.
    return present(SPLIT_HEADS) or present(PLAIN_HEADS)


def pareto_front(points, modes):
    """Indices of the points that no other point dominates (as good in both objectives and better in
    one); equal points do not dominate each other, so ties stay on the front together."""
    signed = [tuple(v if mode == "max" else -v for v, mode in zip(p, modes)) for p in points]
    return [i for i, p in enumerate(signed)
            if not any(q != p and q[0] >= p[0] and q[1] >= p[1] for q in signed)]


def curve_name(label, head):
    return f"{label} {head}" if head else label  # a plain model's one map or curve has no head name


def safe_name(label):
    return re.sub(r"[^A-Za-z0-9._@=+-]+", "_", label) or "_"


# ---- figures and tables -----------------------------------------------------------------------

def figure_folder(experiment_dir, groups):
    """What a study's figures share: (pyplot without a display, EXPERIMENT/figures/ made, one colour
    per label of ``groups``, the paths written so far, ``save(fig, name)``, which writes a figure
    into the folder, closes it and adds its path to that list)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed: the figures only go to files
    import matplotlib.pyplot as plt

    folder = os.path.join(experiment_dir, FIGURES_DIR)
    os.makedirs(folder, exist_ok=True)
    colour = {label: f"C{i % 10}" for i, label in enumerate(groups)}  # one colour per label everywhere
    written = []

    def save(fig, name):
        path = os.path.join(folder, name)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    return plt, folder, colour, written, save


def splitbn_figures(experiment_dir, objectives=None):
    """Write the study's figures and tables into EXPERIMENT/figures/; return the paths written
    (none when no trial has finished).

    ``objectives``: two (metric, mode) pairs, mode "max" or "min", for pareto.png and pareto.csv,
    e.g. ``[("val_acc", "max"), ("uce_at_best", "min")]``.
    """
    if objectives is not None:
        objectives = [tuple(o) for o in objectives]
        if len(objectives) != 2 or any(len(o) != 2 or o[1] not in ("max", "min") for o in objectives):
            raise ValueError(f"objectives must be two (metric, mode) pairs with mode 'max' or 'min', "
                             f"got {objectives!r}")
    trials = finished_trials(experiment_dir)
    if not trials:
        return []
    groups = by_label(trials)
    plt, folder, colour, written, save = figure_folder(experiment_dir, groups)

    # ---- lambda.png: accuracy and uCE against lambda (Fig. 3) ----
    split = [label for label, ts in groups.items() if is_split(ts)]
    if split:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, metric, title in zip(axes, PER_LAMBDA, ("test accuracy (%)", "uCE (%)")):
            for label in split:
                points = [(lam, *spread(values(groups[label], f"{metric}@lam{lam:g}_at_best")))
                          for lam in lambdas(groups[label])]
                points = [p for p in points if p[3]]
                if not points:
                    continue
                lam, mean, std, n = (np.array(column) for column in zip(*points))
                std = np.nan_to_num(std)  # a single seed: no band
                ax.plot(lam, 100 * mean, marker="o", color=colour[label], label=f"{label} (n={n.max()})")
                ax.fill_between(lam, 100 * (mean - std), 100 * (mean + std), color=colour[label], alpha=0.2)
            for label, ts in groups.items():
                mean, std, n = spread(values(ts, f"{metric}_at_best"))
                if label in split or not n:
                    continue
                ax.axhline(100 * mean, ls="--", color=colour[label], label=f"{label} (n={n})")
                if n > 1:
                    ax.axhspan(100 * (mean - std), 100 * (mean + std), color=colour[label], alpha=0.1)
            ax.set_xlabel("λ: weight on the aux branch (0 main, 1 aux)")
            ax.set_ylabel(title)
            if ax.lines:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, f"no {metric} reported", ha="center", transform=ax.transAxes)
        fig.suptitle("Split BatchNorm: interpolating main and aux predictions (mean ± std over seeds)")
        fig.tight_layout()
        save(fig, "lambda.png")

    # ---- fourier_<label>.png: heatmaps per branch (Fig. 4) ----
    used = set()
    for label, ts in groups.items():
        maps = heads(ts, "fourier")
        if not maps:
            continue
        name = safe_name(label)
        while name in used:  # two labels that differ only in characters a file name cannot hold
            name += "_"
        used.add(name)
        fig, axes = plt.subplots(1, len(maps), figsize=(3.6 * len(maps) + 1, 3.6), squeeze=False)
        # One colour scale for the panels, so that main and aux compare by colour.
        low = min(100 * float(np.min(m)) for _, _, (m, _, _) in maps)
        high = max(100 * float(np.max(m)) for _, _, (m, _, _) in maps)
        for ax, (head, _, (mean, _, n)) in zip(axes.flat, maps):
            image = ax.imshow(100 * mean, vmin=low, vmax=high, cmap="viridis")
            ax.set_title(f"{curve_name(label, head)} (n={n})", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="error (%)")
        fig.suptitle("Fourier heatmap: error per basis frequency, low frequencies at the centre", fontsize=10)
        save(fig, f"fourier_{name}.png")
        path = os.path.join(folder, f"fourier_{name}.npz")
        np.savez(path, **{array: mean for _, array, (mean, _, _) in maps})
        written.append(path)

    # ---- lowpass.png: accuracy against the low-pass width (Fig. 5) ----
    curves = [(label, head, stats) for label, ts in groups.items() for head, _, stats in heads(ts, "lowpass_acc")]
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, head, (mean, std, n) in curves:
            width = np.arange(1, len(mean) + 1)
            ax.plot(width, 100 * mean, HEAD_STYLE[head], color=colour[label], label=f"{curve_name(label, head)} (n={n})")
            ax.fill_between(width, 100 * (mean - std), 100 * (mean + std), color=colour[label], alpha=0.1)
        ax.set_xlabel("low-pass width B (frequencies kept)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("Accuracy under low-pass filtering (mean over seeds)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        save(fig, "lowpass.png")

    # ---- pareto.png, pareto.csv: one point per trial ----
    if objectives:
        (x_metric, x_mode), (y_metric, y_mode) = objectives
        points = [(t, values([t], x_metric), values([t], y_metric)) for t in trials]
        points = [(t, x[0], y[0]) for t, x, y in points if x and y]
        if points:
            front = sorted(pareto_front([(x, y) for _, x, y in points], (x_mode, y_mode)),
                           key=lambda i: (points[i][1], points[i][2]))
            fig, ax = plt.subplots(figsize=(7, 5))
            for label in groups:
                mine = [(x, y) for t, x, y in points if t.label == label]
                if mine:
                    ax.scatter(*zip(*mine), color=colour[label], s=18, label=label)
            ax.plot([points[i][1] for i in front], [points[i][2] for i in front], "-o", color="black",
                     mfc="none", ms=9, lw=1, label="Pareto front")
            ax.set_xlabel(f"{x_metric} ({x_mode})")
            ax.set_ylabel(f"{y_metric} ({y_mode})")
            ax.set_title("Trials and their Pareto front")
            ax.legend(fontsize=7)
            fig.tight_layout()
            save(fig, "pareto.png")
            # The config values that set the trials apart say what each front point is (the label
            # has its own column).
            keys = differing_keys([t.config for t in trials], exclude=("label",))
            path = os.path.join(folder, "pareto.csv")
            with open(path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["trial", "label", x_metric, y_metric, *keys])
                for i in front:
                    t, x, y = points[i]
                    config = flat(t.config)
                    writer.writerow([t.name, t.label, x, y, *(show(config.get(k)) for k in keys)])
            written.append(path)

    # ---- table.md, table.csv: one row per label ----
    columns = [m for m in HEADLINE if any(values(ts, m) for ts in groups.values())]
    lams = sorted({lam for label in split for lam in lambdas(groups[label])})
    columns += [m for metric in PER_LAMBDA for lam in lams for m in [f"{metric}@lam{lam:g}_at_best"]
                if any(values(groups[label], m) for label in split)]
    rows = [(label, len(ts), [spread([100 * v for v in values(ts, m)]) for m in columns])
            for label, ts in groups.items()]
    path = os.path.join(folder, "table.csv")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "n", *(f"{m}_{s}" for m in columns for s in ("mean", "std", "n"))])
        for label, n, stats in rows:
            writer.writerow([label, n, *(v if k else "" for mean, std, k in stats
                                         for v in (mean, "" if math.isnan(std) else std, k))])
    written.append(path)
    path = os.path.join(folder, "table.md")
    with open(path, "w") as f:
        f.write(f"# Split BatchNorm: {os.path.basename(os.path.abspath(experiment_dir))}\n\n"
                "Percent, mean ± sample std over seeds, at the best-validation epoch; n = finished "
                "trials of the label (a cell's own n when some lack the metric).\n\n")
        f.write("| label | n | " + " | ".join(columns) + " |\n|---|---|" + "---|" * len(columns) + "\n")
        for label, n, stats in rows:
            escaped = label.replace("|", "\\|")  # a label's own bar would end its cell
            f.write(f"| {escaped} | {n} | " + " | ".join(cell(s, n) for s in stats) + " |\n")
    written.append(path)
    return written


def cell(stats, n_label):
    mean, std, n = stats
    if not n:
        return "-"
    text = f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"
    return text if n == n_label else f"{text} (n={n})"
