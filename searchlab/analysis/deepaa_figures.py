"""Deep AutoAugment's figures and tables (Zheng et al., ICLR 2022; DESIGN.md study 4).

``deepaa_figures(experiment_dir)`` reads every trial's result.json (each report, in order) and the
policies the searches exported (EXPERIMENT/deepaa/<search>.npz), and writes into EXPERIMENT/figures/
what the trials so far give data for (a file with nothing to show yet is not written):

    deepaa_policy.png, .csv   (the paper's Fig. 3) per DeepAA search and layer: the probability of each
                              op (the sum over its entries, ops in table order), and of each magnitude
                              level 0..12 over the entries of ops with a magnitude range (drawn as its
                              share of those entries' probability); the csv holds the op probabilities,
    deepaa_policy_levels.csv  this one the level probabilities and shares. A search not yet exported is
                              drawn from the logits of its finished layers so far ("source" column)
    deepaa_layers.csv         one row per layer trial: its last report (a running layer's latest)
    deepaa_cos.png, .csv      (Fig. 4) against the layer, DeepAA and DeepTA: (a) cos(g_V, g_T) of the
                              layer's last report, before the layer's step (DeepAA also after it);
                              (b) the std of the rewards over the search points; mean ± sample std
                              (ddof 1) over the seeds, error bars from two seeds on; the csv: mean, std, n
    deepaa_steps.png          per DeepAA search, cos(g_V, g_T) against the step, one line per layer
                              (dashed: after the step): does the cosine rise within a layer?
    deepaa_table.md, .csv     (Table 5 and the baselines) one row per evaluation label: n, and mean and
                              sample std over its seeds of the last epoch's test accuracy and of the
                              test accuracy at the best-validation epoch, in percent
    deepaa_accuracy.png       the last test accuracy (mean ± std) against the policy's number of layers,
                              per DeepAA search; the other labels as horizontal lines
    deepaa_cost.png, .csv     device-hours of the proxy's pretraining (0 when it was cached) and of each
                              layer of each search (the layer's last cumulative device_hours), each
                              search's total and the total of all rows

Searches are named ``deepaa-s<seed>`` (DeepAA) and ``deepta-s<seed>`` (DeepTA: uniform layers that never
move, a measurement); their seeds are Fig. 4's repeats. A report's cos and reward numbers are means
over its steps, so "the layer's last report" is its last ``report_every`` steps. An evaluation label's
seeds are its repeats, and only finished evaluation trials count (their last epoch is the config's
last); a layer counts with what it has reported, a running one with its latest report.
"""
import csv
import glob
import math
import os
import re
from typing import NamedTuple

import numpy as np

from searchlab import deepaa
from searchlab.analysis.figures import cell, figure_folder, result_rows, spread, values
from searchlab.augment import ops
from searchlab.augment.policies import load_policy
from searchlab.config import resolve
from searchlab.train import total_epochs

METHODS = {"deepaa": ("DeepAA", "C0"), "deepta": ("DeepTA", "C3")}  # name, colour
SEARCH = re.compile(r"^(deepaa|deepta)-s(\d+)$")
DEPTH = re.compile(r"^(deepaa-s\d+)-L(\d+)$")  # an evaluation of a search's policy cut to its first layers
# deepaa_layers.csv's columns: what a layer trial reports, its logits and texts aside.
LAYER_METRICS = ("step", "cos_before", "cos_before_std", "cos_after", "reward_mean", "reward_std", "entropy",
                 "identity_prob", "device_hours")
# Fig. 4's panels: (y label, title, [(metric, line style, marker, curve name)]). Hollow squares for cos
# after the step, which often lies on the one before it.
COS_PANELS = [("cos(g_V, g_T)", "(a) cosine similarity at the end of each layer",
               [("cos_before", "-", "o", "before the step"), ("cos_after", "--", "s", "after the step")]),
              ("reward std", "(b) std of the rewards over the search points", [("reward_std", "-", "o", "")])]
COS_METRICS = [metric for _, _, lines in COS_PANELS for metric, _, _, _ in lines]
# The table's columns: (metric, heading), in percent.
ACCURACY = [("test_acc", "last test acc (%)"), ("test_acc_at_best", "test acc at best val (%)")]


class Run(NamedTuple):
    name: str      # the trial's folder
    kind: str      # deepaa_pretrain | deepaa_layer | train
    label: str
    config: dict
    rows: list     # its reports, in order

    @property
    def metrics(self):  # the latest report (what figures.values reads)
        return self.rows[-1]


# ---- reading the experiment -----------------------------------------------------------------

def read_runs(experiment_dir):
    """Every trial that has reported, from its result.json; other folders (deepaa/, figures/) have none."""
    runs = []
    for path in sorted(glob.glob(os.path.join(experiment_dir, "*", "result.json"))):
        rows = result_rows(path)
        if rows:
            config = rows[-1]["config"]
            runs.append(Run(os.path.basename(os.path.dirname(path)), config.get("kind", "train"),
                            str(config.get("label")), config, rows))
    return runs


def finished(run):
    """Whether a trial made its last report: a layer's has its logits, the pretraining's the proxy's
    accuracy, an evaluation's is its last epoch (appended refinement epochs included)."""
    if run.kind == "deepaa_layer":
        return "logits" in run.metrics
    if run.kind == "deepaa_pretrain":
        return "proxy_val_acc" in run.metrics
    return run.metrics.get("epoch") == total_epochs(resolve({k: v for k, v in run.config.items() if k != "kind"}))


def seeds(n):
    """"(n=2)", or "(n=1-2)" for a curve whose points have different numbers of seeds."""
    return f"(n={n.max()})" if n.min() == n.max() else f"(n={n.min()}-{n.max()})"


def search_key(search):
    match = SEARCH.match(search)
    return (match[1], int(match[2])) if match else (search, -1)


def layer_runs(runs):
    """{search: {layer: its trial}}, searches DeepAA first and by seed; of two trials of one layer (a
    trial restarted under a new id) the finished one, else the one with more reports."""
    found = {}
    for run in runs:
        if run.kind != "deepaa_layer" or not SEARCH.match(search := run.label.split("/")[0]):
            continue
        layer = int(run.metrics["layer"])
        known = found.setdefault(search, {}).get(layer)
        if known is None or (finished(run), len(run.rows)) > (finished(known), len(known.rows)):
            found[search][layer] = run
    return {search: dict(sorted(found[search].items())) for search in sorted(found, key=search_key)}


def searched_policies(experiment_dir, layers):
    """{DeepAA search: (probs [K, E], table, source)}: its exported policy file, else its layers finished
    so far (1, 2, ... without a gap), through the softmax the export uses."""
    found = {}
    for path in sorted(glob.glob(os.path.join(experiment_dir, "deepaa", "*.npz"))):
        policy = load_policy(path)
        found[os.path.basename(path)[:-len(".npz")]] = (policy["policy_probs"], policy["table"], "exported")
    for search, by_layer in layers.items():
        logits = []
        while len(logits) + 1 in by_layer and finished(by_layer[len(logits) + 1]):
            logits.append(by_layer[len(logits) + 1].metrics["logits"])
        if search.startswith("deepaa") and search not in found and logits:
            found[search] = (deepaa.policy_probs(logits), deepaa.Space().table, f"layers 1-{len(logits)} so far")
    return {search: found[search] for search in sorted(found, key=search_key)}


# ---- a policy's marginals -------------------------------------------------------------------

def op_marginals(probs, table):
    """(the op names in table order, [K, ops]: each op's probability, the sum over its entries)."""
    names = list(dict.fromkeys(name for name, _ in table))
    return names, probs @ np.eye(len(names))[[names.index(name) for name, _ in table]]


def level(name, magnitude):
    """An entry's magnitude level 0..12, as a policy file stores it (policies' layout comment); None
    for an op without a magnitude range (Identity, flip, cutout, ...)."""
    if name not in ops.RANGES:
        return None
    low, high = ops.RANGES[name]
    return round((float(magnitude) - low) / (high - low) * (ops.DEEPAA_LEVELS - 1))


def level_marginals(probs, table):
    """[K, 13]: each level's probability, the sum over the entries at that level of ops with a range."""
    out = np.zeros((len(probs), ops.DEEPAA_LEVELS))
    for j, (name, magnitude) in enumerate(table):
        if (found := level(name, magnitude)) is not None:
            out[:, found] += probs[:, j]
    return out


# ---- figures and tables -----------------------------------------------------------------------

def whole_x(ax, xs):
    """Whole-number ticks on the x axis (at each x when there are few), with room beside the outer
    points: a locator asked for whole numbers over a range below 1 (a lone point) gives fractions."""
    from matplotlib.ticker import MaxNLocator

    if len(set(xs)) <= 12:
        ax.set_xticks(sorted(set(xs)))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    pad = max(0.5, 0.05 * (max(xs) - min(xs)))
    ax.set_xlim(min(xs) - pad, max(xs) + pad)


def deepaa_figures(experiment_dir):
    """Write the study's figures and tables into EXPERIMENT/figures/; return the paths written (none
    when no trial has reported yet)."""
    runs = read_runs(experiment_dir)
    if not runs:
        return []
    layers = layer_runs(runs)
    policies = searched_policies(experiment_dir, layers)
    trained = {}  # evaluation label -> [(trial, finished)]
    for run in runs:
        if run.kind == "train":
            trained.setdefault(run.label, []).append((run, finished(run)))
    # Evaluation labels: each search's policy by depth first (search, depth), then the others by name.
    # A search's depths are one line of the accuracy plot, every other label a line of its own.
    depth = {label: (match[1], int(match[2])) for label in trained for match in [DEPTH.match(label)] if match}
    labels = sorted(trained, key=lambda label: (0, *search_key(depth[label][0]), depth[label][1])
                    if label in depth else (1, label))
    series = {label: depth[label][0] if label in depth else label for label in labels}
    plt, folder, colour, written, save = figure_folder(experiment_dir, dict.fromkeys([*layers, *series.values()]))

    def write_csv(name, header, rows):
        path = os.path.join(folder, name)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows([["" if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in row]
                              for row in rows])
        written.append(path)

    # ---- deepaa_policy.png, .csv, deepaa_policy_levels.csv: the searched policies (Fig. 3) ----
    if policies:
        heights = [len(probs) for probs, _, _ in policies.values()]
        fig, axes = plt.subplots(len(policies), 2, figsize=(16, sum(0.45 * k + 1.9 for k in heights)), squeeze=False,
                                 gridspec_kw={"width_ratios": [18, 13], "height_ratios": heights})
        op_rows, level_rows = [], []
        for (search, (probs, table, source)), (ax_op, ax_level) in zip(policies.items(), axes):
            names, by_op = op_marginals(probs, table)
            by_level = level_marginals(probs, table)
            share = by_level / np.maximum(by_level.sum(1, keepdims=True), 1e-12)
            for ax, matrix, columns, title in (
                    (ax_op, by_op, names, "probability of each op"),
                    (ax_level, share, range(ops.DEEPAA_LEVELS), "magnitude level (share of the ops with a range)")):
                ax.imshow(matrix, aspect="auto", cmap="Blues", vmin=0, vmax=max(float(matrix.max()), 1e-12))
                for (i, j), p in np.ndenumerate(matrix):
                    if p >= 0.005:
                        ax.text(j, i, f"{p:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if p > 0.6 * matrix.max() else "black")
                ax.set_xticks(range(len(columns)), [str(c) for c in columns], rotation=45 if ax is ax_op else 0,
                              ha="right" if ax is ax_op else "center", fontsize=8)
                ax.set_yticks(range(len(probs)), [f"layer {k + 1}" for k in range(len(probs))], fontsize=8)
                ax.set_title(f"{search} ({source}): {title}", fontsize=9)
            op_rows += [(search, source, k + 1, name, p) for (k, i), p in np.ndenumerate(by_op) for name in [names[i]]]
            level_rows += [(search, source, k + 1, lv, by_level[k, lv], share[k, lv])
                           for k, lv in np.ndindex(*by_level.shape)]
        fig.suptitle("Searched policies: op and magnitude distributions per layer", fontsize=11)
        fig.tight_layout()
        save(fig, "deepaa_policy.png")
        write_csv("deepaa_policy.csv", ["search", "source", "layer", "op", "probability"], op_rows)
        write_csv("deepaa_policy_levels.csv",
                  ["search", "source", "layer", "level", "probability", "share_of_ops_with_a_range"], level_rows)

    # ---- deepaa_layers.csv: each layer trial's last report ----
    if layers:
        write_csv("deepaa_layers.csv", ["search", "method", "seed", "layer", "finished", "reports", *LAYER_METRICS,
                                        "top5", "trial"],
                  [(search, *search_key(search), layer, finished(run), len(run.rows),
                    *(run.metrics.get(m) for m in LAYER_METRICS), run.metrics.get("top5"), run.name)
                   for search, by_layer in layers.items() for layer, run in by_layer.items()])

    # ---- deepaa_cos.png, .csv: cos(g_V, g_T) and the reward spread per layer (Fig. 4) ----
    groups = {}  # (method, layer) -> its trials over the seeds
    for search, by_layer in layers.items():
        for layer, run in by_layer.items():
            groups.setdefault((search_key(search)[0], layer), []).append(run)
    groups = dict(sorted(groups.items()))
    stats = {key: {metric: spread(values(ts, metric)) for metric in COS_METRICS} for key, ts in groups.items()}
    if groups:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for ax, (ylabel, title, lines) in zip(axes, COS_PANELS):
            for method, (name, method_colour) in METHODS.items():
                for metric, style, marker, curve in lines:
                    points = [(layer, *stats[m, layer][metric]) for m, layer in groups if m == method]
                    points = [p for p in points if p[3]]
                    if points:
                        x, mean, std, n = (np.array(column) for column in zip(*points))
                        ax.errorbar(x, mean, yerr=np.nan_to_num(std), ls=style, marker=marker, ms=7, capsize=3,
                                    color=method_colour, mfc="none" if marker == "s" else method_colour,
                                    label=" ".join(filter(None, (name, curve, seeds(n)))))
            whole_x(ax, [layer for _, layer in groups])
            ax.set_xlabel("layer")
            ax.set_ylabel(ylabel)
            ax.set_title(title, fontsize=10)
            ax.legend(fontsize=8)
        fig.suptitle("DeepAA vs DeepTA per layer: the layer's last report (mean ± std over seeds)", fontsize=11)
        fig.tight_layout()
        save(fig, "deepaa_cos.png")
        write_csv("deepaa_cos.csv",
                  ["method", "layer", *(f"{m}_{s}" for m in COS_METRICS for s in ("mean", "std", "n")), "searches"],
                  [(method, layer, *(v for m in COS_METRICS for v in stats[method, layer][m]),
                    " ".join(run.label.split("/")[0] for run in ts)) for (method, layer), ts in groups.items()])

    # ---- deepaa_steps.png: cos(g_V, g_T) within each layer ----
    searches = [search for search in layers if search.startswith("deepaa")]
    if searches:
        columns = min(3, len(searches))
        rows = -(-len(searches) // columns)
        fig, axes = plt.subplots(rows, columns, figsize=(5.5 * columns + 0.5, 4 * rows), squeeze=False)
        for ax, search in zip(axes.flat, searches):
            for layer, run in layers[search].items():
                for metric, style, marker in (("cos_before", "-", "o"), ("cos_after", "--", "s")):
                    y = [math.nan if r.get(metric) is None else r[metric] for r in run.rows]
                    ax.plot([r["step"] for r in run.rows], y, ls=style, marker=marker, ms=5,
                            color=f"C{(layer - 1) % 10}", mfc="none" if marker == "s" else None,
                            label=f"layer {layer}" + ("" if finished(run) else " (running)") if style == "-" else None)
            whole_x(ax, [r["step"] for run in layers[search].values() for r in run.rows])
            ax.set_xlabel("step of the layer (each point: the mean over its report's steps)")
            ax.set_ylabel("cos(g_V, g_T)")
            ax.set_title(f"{search}: solid before the step, dashed (hollow) after", fontsize=10)
            ax.legend(fontsize=8)
        for ax in axes.flat[len(searches):]:
            ax.set_visible(False)
        fig.suptitle("Does cos(g_V, g_T) rise over each layer's steps?", fontsize=11)
        fig.tight_layout()
        save(fig, "deepaa_steps.png")

    # ---- deepaa_table.md, .csv: one row per evaluation label (Table 5 and the baselines) ----
    if trained:
        done = {label: [run for run, is_done in trained[label] if is_done] for label in labels}
        table = {label: [spread([100 * v for v in values(done[label], m)]) for m, _ in ACCURACY] for label in labels}
        write_csv("deepaa_table.csv", ["label", "n", "unfinished", *(f"{m}_{s}" for m, _ in ACCURACY
                                                                     for s in ("mean", "std", "n"))],
                  [(label, len(done[label]), len(trained[label]) - len(done[label]),
                    *(v for stats_ in table[label] for v in stats_)) for label in labels])
        path = os.path.join(folder, "deepaa_table.md")
        with open(path, "w") as f:
            f.write(f"# Deep AutoAugment: {os.path.basename(os.path.abspath(experiment_dir))}\n\n"
                    "Percent, mean ± sample std over seeds; n = finished trials of the label (a cell's own n "
                    "when some lack the metric), unfinished ones are not counted. Last: at the last epoch; "
                    "at best val: at the epoch of the best validation accuracy. deepaa-s<seed>-L<k>: that "
                    "search's policy cut to its first k layers.\n\n")
            headings = ["label", "n", "unfinished", *(h for _, h in ACCURACY)]
            f.write("| " + " | ".join(headings) + " |\n|" + "---|" * len(headings) + "\n")
            for label in labels:
                n = len(done[label])
                f.write("| " + " | ".join([label.replace("|", "\\|"), str(n), str(len(trained[label]) - n),
                                           *(cell(s, n) for s in table[label])]) + " |\n")
        written.append(path)

        # ---- deepaa_accuracy.png: test accuracy against the number of layers ----
        if any(table[label][0][2] for label in labels):
            fig, ax = plt.subplots(figsize=(7.5, 4.5))
            for line in dict.fromkeys(series.values()):
                points = [(depth[label][1], *table[label][0]) for label in labels
                          if label in depth and series[label] == line and table[label][0][2]]
                if points:
                    x, mean, std, n = (np.array(column) for column in zip(*points))
                    ax.errorbar(x, mean, yerr=np.nan_to_num(std), marker="o", capsize=3, color=colour[line],
                                label=f"{line} {seeds(n)}")
                elif line in table and table[line][0][2]:  # a baseline
                    mean, std, n = table[line][0]
                    ax.axhline(mean, ls="--", color=colour[line], label=f"{line} (n={n})")
                    if n > 1:
                        ax.axhspan(mean - std, mean + std, color=colour[line], alpha=0.1)
            depths = [k for label, (_, k) in depth.items() if table[label][0][2]]
            if depths:
                whole_x(ax, depths)
            ax.set_xlabel("layers of the searched policy (dashed: baselines)")
            ax.set_ylabel("test accuracy at the last epoch (%)")
            ax.set_title("Test accuracy (mean ± std over seeds)", fontsize=10)
            ax.legend(fontsize=8)
            fig.tight_layout()
            save(fig, "deepaa_accuracy.png")

    # ---- deepaa_cost.csv, .png: the search cost in device-hours ----
    def hours(run):
        return next(iter(values([run], "device_hours")), math.nan)

    pretrain = [run for run in runs if run.kind == "deepaa_pretrain"]
    if pretrain or layers:
        cost = [(run.label, "pretraining", hours(run), finished(run), bool(run.metrics.get("cached")))
                for run in pretrain]
        for search, by_layer in layers.items():
            cost += [(search, layer, hours(run), finished(run), "") for layer, run in by_layer.items()]
            cost.append((search, "total", sum(hours(run) for run in by_layer.values()), "", ""))
        cost.append(("all", "total", sum(row[2] for row in cost if row[1] != "total"), "", ""))
        write_csv("deepaa_cost.csv", ["search", "layer", "device_hours", "finished", "cached"], cost)
        # One bar per search, a segment per layer; the pretraining's bar (grey) first.
        bars = [(f"{run.label} pretraining" + (" (cached)" if run.metrics.get("cached") else ""), {0: hours(run)})
                for run in pretrain]
        bars += [(search, {layer: hours(run) for layer, run in by_layer.items()})
                 for search, by_layer in layers.items()]
        fig, ax = plt.subplots(figsize=(8, 1.2 + 0.5 * len(bars)))
        for y, (name, parts) in enumerate(bars):
            lefts = np.cumsum([0.0, *parts.values()])
            for (layer, value), left in zip(parts.items(), lefts):
                ax.barh(y, value, left=left, color=f"C{(layer - 1) % 10}" if layer else "grey", edgecolor="white",
                        label=f"layer {layer}" if layer else None)
            ax.text(lefts[-1], y, f" {lefts[-1]:.3g}", va="center", fontsize=8)
        by_name = dict(zip(*ax.get_legend_handles_labels()[::-1]))  # {label: handle}: one entry per layer
        if by_name:
            ax.legend(by_name.values(), by_name.keys(), fontsize=8, loc="lower right")
        ax.set_yticks(range(len(bars)), [name for name, _ in bars], fontsize=8)
        ax.invert_yaxis()
        ax.margins(x=0.15)
        ax.set_xlabel("device-hours")
        ax.set_title("Search cost: proxy pretraining and each search's layers", fontsize=10)
        fig.tight_layout()
        save(fig, "deepaa_cost.png")
    return written
