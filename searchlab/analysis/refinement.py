"""The refinement study's figures and table (He et al. 2019, "Data augmentation revisited"; DESIGN.md
study 3): T1 epochs with an intensive augmentation, then T2 refinement epochs with flip+crop only.

``refine_figures(experiment_dir)`` reads what the finished trials left on disk, through
``searchlab.checkpoint`` only (their last metrics, arrays and every epoch's metrics), and writes into
EXPERIMENT/figures/:

    curves.png, .csv      (the paper's Fig. 1) per label, the mean over seeds of the clean training loss
                          (and, dashed, the loss on the augmented batches the optimiser saw) and of the
                          test loss against the epoch, a band of ± one std where there are two seeds or
                          more, a dotted line at the label's switch epoch; the csv holds the numbers drawn
    spectrum.png, .npz    (Fig. 3) singular values of the penultimate features' covariance, largest
                          first, of class 0 and of all classes, at the best (solid) and the last (dashed)
                          epoch, mean over seeds; the npz holds the means drawn as "<label>:<array>"
    switch.png, .csv      (Fig. 4) last-epoch test error against the switch epoch; only when some
                          setting was run with at least two switch epochs
    table.md, table.csv   one row per label: n, the refinement, then mean and sample std (ddof 1) over
                          its seeds of the best, last and median-of-last-10 test accuracy and of the
                          final clean training loss, and the gain over the label without refinement

Trials with the same ``label`` are one row or curve; their seeds are the repeats. Only finished
trials count (``figures.finished_trials``).

The switch epoch is how many epochs trained with the intensive augmentation (``train.refine_start``):
``refine.start_epoch`` when set (a fixed budget of ``optim.epochs``), else ``optim.epochs`` with
``refine.epochs`` appended. A trial refines when it trains at least one epoch after its switch; one
without refinement (no refine epochs and no start epoch, or a switch at its last epoch: the fixed-
budget sweeps' "never") stands in Fig. 4 at its last epoch, ``optim.epochs``.

Pairing, for "gain vs without": a refined label's counterpart is the first label without refinement
whose config is the same once ``refine``, ``seed``, ``label`` and ``search`` (a searcher's raw
suggestions, read by nothing) are left out. ``optim.epochs`` must match too: appended refinement is
then compared with the same T1 epochs without the T2 refinement epochs, and a switch inside a fixed
budget with that budget never switched. The gain is the difference of their mean last test
accuracies, in points; the counterpart is named in the table's "without" column. A label is judged
by its first trial's config: its seeds differ in the seed only.
"""
import csv
import json
import math
import os

import numpy as np

from searchlab import checkpoint
from searchlab.analysis.figures import (by_label, differing_keys, figure_folder, finished_trials, flat,
                                        safe_name, seed_mean, show, spread, values)
from searchlab.train import refine_start, total_epochs

# The panels of curves.png: (y label, title, [(metric, line style)]).
# Dashed: the loss on the augmented batches, which is what the optimiser saw.
CURVES = [("training loss", "clean training data (solid), augmented batches (dashed)",
           [("train_clean_loss", "-"), ("train_loss", "--")]),
          ("test loss", "test data", [("test_loss", "-")])]
CURVE_METRICS = [metric for _, _, lines in CURVES for metric, _ in lines]
# The spectra drawn in spectrum.png: panel title -> (array at the best epoch, at the last epoch).
SPECTRA = {"class 0": ("spectrum_class0_at_best", "spectrum_class0_at_last"),
           "all classes": ("spectrum_all_at_best", "spectrum_all_at_last")}
# The table's columns: (metric, heading, in percent).
TABLE = [("test_acc_max", "best test acc (%)", True), ("test_acc", "last test acc (%)", True),
         ("test_acc_median10", "median of last 10 (%)", True),
         ("train_clean_loss", "final clean train loss", False)]
# Config keys that do not make two trials different settings: repeats, names, raw search records.
NOT_A_SETTING = ("seed", "label", "search")


# ---- the refine group -----------------------------------------------------------------------

def is_refined(config):
    """Whether the trial trained an epoch after its switch (a switch at the very end trains none)."""
    start = refine_start(config)
    return start is not None and start < total_epochs(config)


def switch_epoch(config):
    """Fig. 4's x: the epochs before the switch, or all of them without refinement."""
    return refine_start(config) if is_refined(config) else config["optim"]["epochs"]


def describe(config):
    """The refinement as a table cell: "2 epochs", "switch at 30", "none", with its variants."""
    refine = config["refine"]
    if not is_refined(config):
        return "none" if refine["start_epoch"] is None else f"none (switch at the end, {refine['start_epoch']})"
    if refine["start_epoch"] is not None:
        text = f"switch at {refine['start_epoch']}"
    else:
        text = f"{refine['epochs']} epochs"
    pipeline = refine["pipeline"]
    if pipeline != "standard":  # e.g. refining with no augmentation at all
        # a preset by its name, op specs by theirs
        text += ", " + (pipeline if isinstance(pipeline, str) else "+".join(op["op"] for op in pipeline) or "none")
    return text + (", gradual" if refine["gradual"] else "")


def setting(config, leave_out):
    """The config as one comparable string, without the dotted keys (or groups) in ``leave_out``."""
    kept = {k: v for k, v in flat(config).items()
            if not any(k == out or k.startswith(out + ".") for out in leave_out)}
    return json.dumps(kept, sort_keys=True, default=str)


def counterparts(groups):
    """{refined label: the label without refinement it pairs with} (rule in the module docstring)."""
    leave_out = (*NOT_A_SETTING, "refine")
    plain = {}
    for label, ts in groups.items():
        if not is_refined(ts[0].config):
            plain.setdefault(setting(ts[0].config, leave_out), label)  # the first one, if several
    found = {}
    for label, ts in groups.items():
        match = plain.get(setting(ts[0].config, leave_out))
        if is_refined(ts[0].config) and match is not None:
            found[label] = match
    return found


# ---- per-epoch curves -------------------------------------------------------------------------

def epoch_stats(histories, metric):
    """{epoch: (mean, sample std, n)} of ``metric`` over the histories (one per seed) that report it."""
    by_epoch = {}
    for history in histories:
        for i, metrics in enumerate(history):
            value = metrics.get(metric)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                by_epoch.setdefault(int(metrics.get("epoch", i + 1)), []).append(float(value))
    return {epoch: spread(found) for epoch, found in sorted(by_epoch.items())}


# ---- figures and tables -----------------------------------------------------------------------

def legend_or_note(ax):
    """A legend, or "not reported" on a panel that no trial gave a line."""
    if ax.lines:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "not reported", ha="center", transform=ax.transAxes)


def refine_figures(experiment_dir):
    """Write the study's figures and tables into EXPERIMENT/figures/; return the paths written (none
    when no trial has finished)."""
    trials = finished_trials(experiment_dir)
    if not trials:
        return []
    from matplotlib.ticker import MaxNLocator

    groups = by_label(trials)
    plt, folder, colour, written, save = figure_folder(experiment_dir, groups)

    def switch_line(ax, label):
        for epoch in sorted({refine_start(t.config) for t in groups[label] if is_refined(t.config)}):
            ax.axvline(epoch, ls=":", color=colour[label])

    # ---- curves.png, curves.csv: losses against the epoch (Fig. 1) ----
    histories = {label: [checkpoint.read_history(checkpoint.newest(os.path.join(experiment_dir, t.name)))
                         for t in ts] for label, ts in groups.items()}
    stats = {label: {metric: epoch_stats(histories[label], metric) for metric in CURVE_METRICS}
             for label in groups}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (ylabel, title, lines) in zip(axes, CURVES):
        for label in groups:
            for metric, style in lines:
                points = stats[label][metric]
                if not points:
                    continue
                epoch = np.array(list(points))
                mean, std, n = (np.array(column) for column in zip(*points.values()))
                ax.plot(epoch, mean, style, color=colour[label],
                        label=f"{label} (n={n.max()})" if style == "-" else None)
                if n.max() > 1:
                    ax.fill_between(epoch, mean - np.nan_to_num(std), mean + np.nan_to_num(std),
                                    color=colour[label], alpha=0.15)
            switch_line(ax, label)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (dotted: switch to refinement)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel}: {title}", fontsize=10)
        legend_or_note(ax)
    fig.suptitle("Refinement: losses per epoch (mean ± std over seeds)")
    fig.tight_layout()
    save(fig, "curves.png")
    path = os.path.join(folder, "curves.csv")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "epoch", *(f"{m}_{s}" for m in CURVE_METRICS for s in ("mean", "std", "n"))])
        for label in groups:
            epochs = sorted({e for metric in CURVE_METRICS for e in stats[label][metric]})
            for epoch in epochs:
                cells = [stats[label][m].get(epoch, (math.nan, math.nan, 0)) for m in CURVE_METRICS]
                writer.writerow([label, epoch, *(v for mean, std, n in cells
                                                 for v in (mean if n else "", "" if math.isnan(std) else std, n))])
    written.append(path)

    # ---- spectrum.png, spectrum.npz: singular values of the penultimate features (Fig. 3) ----
    spectra = {(label, array): found for label, ts in groups.items() for pair in SPECTRA.values()
               for array in pair for found in [seed_mean(ts, array)] if found is not None}
    if spectra:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for ax, (title, (best, last)) in zip(axes, SPECTRA.items()):
            for label in groups:
                for array, style, when in ((best, "-", "best"), (last, "--", "last")):
                    if (label, array) not in spectra:
                        continue
                    mean, _, n = spectra[label, array]
                    # A zero singular value has no place on a log axis: leave it out rather than clip it.
                    ax.plot(np.arange(1, len(mean) + 1), np.where(mean > 0, mean, np.nan), style,
                            color=colour[label], label=f"{label}, {when} model (n={n})")
            ax.set_yscale("log")
            ax.set_xlabel("index (largest first)")
            ax.set_ylabel("singular value")
            ax.set_title(f"penultimate features, {title}")
            legend_or_note(ax)
        fig.suptitle("Singular values of the feature covariance (mean over seeds; solid best, dashed last)")
        fig.tight_layout()
        save(fig, "spectrum.png")
        path = os.path.join(folder, "spectrum.npz")
        names = file_names(groups)
        np.savez(path, **{f"{names[label]}:{array}": mean for (label, array), (mean, _, _) in spectra.items()})
        written.append(path)

    # ---- switch.png, switch.csv: test error against the switch epoch (Fig. 4) ----
    # A setting is everything but the seed and the switch epoch; a trial without refinement stands
    # at its last epoch (never switched), so the plain baseline closes its setting's curve.
    leave_out = (*NOT_A_SETTING, "refine.start_epoch")
    settings = {}  # setting -> {switch epoch: [trials]}
    for t in trials:
        settings.setdefault(setting(t.config, leave_out), {}).setdefault(switch_epoch(t.config), []).append(t)
    curves = [by_x for by_x in settings.values() if len(by_x) > 1]
    if curves:
        # Each curve is named by what sets its setting apart from the other curves.
        firsts = [next(iter(by_x.values()))[0].config for by_x in curves]
        keys = [k for k in differing_keys(firsts, exclude=leave_out) if not k.startswith("search.")]
        rows = []
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, (first, by_x) in enumerate(zip(firsts, curves)):
            name = ",".join(f"{k}={show(flat(first).get(k))}" for k in keys) or "all"
            points = [(x, *spread([100 * (1 - v) for v in values(by_x[x], "test_acc")])) for x in sorted(by_x)]
            points = [p for p in points if p[3]]
            rows += [(name, *p) for p in points]
            if points:
                x, mean, std, n = (np.array(column) for column in zip(*points))
                ax.errorbar(x, mean, yerr=np.nan_to_num(std), marker="o", capsize=3, color=f"C{i % 10}",
                            label=f"{name} (n={n.min()}-{n.max()})" if n.min() < n.max() else f"{name} (n={n.max()})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("switch epoch (epochs with the intensive augmentation; last: never switched)")
        ax.set_ylabel("test error at the last epoch (%)")
        ax.set_title("Fixed budget: when to switch to refinement (mean ± std over seeds)", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        save(fig, "switch.png")
        path = os.path.join(folder, "switch.csv")
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["setting", "switch_epoch", "test_err_mean", "test_err_std", "n"])
            for name, x, mean, std, n in rows:
                writer.writerow([name, x, mean, "" if math.isnan(std) else std, n])
        written.append(path)

    # ---- table.md, table.csv: one row per label ----
    def last_acc(ts):
        return spread([100 * v for v in values(ts, "test_acc")])[0]

    pairs = counterparts(groups)
    rows = []
    for label, ts in groups.items():
        stats = [spread([(100 * v if percent else v) for v in values(ts, metric)]) for metric, _, percent in TABLE]
        without = pairs.get(label)
        gain = last_acc(ts) - last_acc(groups[without]) if without is not None else math.nan
        rows.append((label, len(ts), describe(ts[0].config), stats, without, gain))
    path = os.path.join(folder, "table.csv")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "n", "refinement", *(f"{m}_{s}" for m, _, _ in TABLE for s in ("mean", "std", "n")),
                         "without", "gain_vs_without"])
        for label, n, refinement, stats, without, gain in rows:
            writer.writerow([label, n, refinement,
                             *(v if k else "" for mean, std, k in stats
                               for v in (mean, "" if math.isnan(std) else std, k)),
                             without or "", "" if math.isnan(gain) else gain])
    written.append(path)
    path = os.path.join(folder, "table.md")
    with open(path, "w") as f:
        f.write(f"# Refinement: {os.path.basename(os.path.abspath(experiment_dir))}\n\n"
                "Mean ± sample std over seeds, at the last epoch (best: the highest test accuracy of any "
                "epoch); n = finished trials of the label (a cell's own n when some lack the metric). "
                "Gain: last test accuracy minus that of the same setting without refinement (the "
                "\"without\" label), in points.\n\n")
        headings = ["label", "n", "refinement", *(h for _, h, _ in TABLE), "without", "gain vs without"]
        f.write("| " + " | ".join(headings) + " |\n|" + "---|" * len(headings) + "\n")
        for label, n, refinement, stats, without, gain in rows:
            cells = [cell(s, n, ".2f" if percent else ".4g") for s, (_, _, percent) in zip(stats, TABLE)]
            f.write("| " + " | ".join([escape(label), str(n), refinement, *cells, escape(without or "-"),
                                       "-" if math.isnan(gain) else f"{gain:+.2f}"]) + " |\n")
    written.append(path)
    return written


def file_names(labels):
    """{label: a name that a file or array name can hold}, distinct for distinct labels."""
    names = {}
    for label in labels:
        name = safe_name(label)
        while name in names.values():  # two labels that differ only in characters a name cannot hold
            name += "_"
        names[label] = name
    return names


def cell(stats, n_label, number):
    mean, std, n = stats
    if not n:
        return "-"
    text = f"{mean:{number}}" if math.isnan(std) else f"{mean:{number}} ± {std:{number}}"
    return text if n == n_label else f"{text} (n={n})"


def escape(label):
    return label.replace("|", "\\|")  # a label's own bar would end its cell
