"""The CKA study on an experiment directory: which comparisons, running one, and the report.

Reads only artifacts on disk (each trial's ``searchlab_trial.json`` and checkpoints), so the same code
serves the post-trial Ray actors and ``searchlab cka`` on a finished experiment.

Per group (e.g. one architecture) with references r1..rR (``cka.references``, R >= 2, unaugmented
runs of different seeds): every reference pair (ri, rj), i < j, and (ri, run) for every reference and
every other run; CKA between every pair of conv layers on the first ``cka.images`` validation images,
with the models at their best-validation epoch. A run's ``cka.augmentation`` (default: its label)
names the row and curve it belongs to: runs sharing it are seeds of one augmentation.

The impact of one run is ``cka_impact`` per layer averaged over all reference pairs (ri, rj), from
CKA(ri, rj), CKA(ri, run) and CKA(rj, run); with two references that is the paper's formula. An
augmentation's curve is the mean of its runs' impacts, its band ± the sample standard deviation
(ddof 1) over its runs when there are two or more.

Outputs in EXPERIMENT/cka/:
    GROUP/a__b.npz          one comparison: cka (layers_a x layers_b), layers_a, layers_b, images
    GROUP/cka_heatmaps.png  all-layer-pairs CKA: the first reference pair, then the first reference
                            against the first run of each augmentation
    GROUP/cka_impact.png    impact against normalised depth: mean line and ± std band per augmentation
    impact_curves.csv       the plotted curves: group, augmentation, n, depth, mean, std (std empty
                            for n = 1)
    cka_table.csv           one row per (group, augmentation), then the references' row "none":
                              n                      finished runs of the augmentation that have all
                                                     their comparisons (R for the references' row)
                              test_acc_at_best_mean  test accuracy at the best-validation epoch
                              test_acc_at_best_std   (a fraction), mean and sample std over the n runs
                              cka_impact_mean        a run's impact averaged over its layers, then
                              cka_impact_std         mean and sample std over the n runs (empty for
                                                     the references)
                            stds are empty for n = 1; values at full precision
    cka_table.md            the same as "mean ± std (n)"
"""
import csv
import glob
import itertools
import math
import os
import tempfile

import numpy as np

from searchlab import checkpoint
from searchlab.analysis.cka import cka_impact, cka_matrix, layer_depths
from searchlab.data import DATASETS, batches, load_dataset, move, normalize
from searchlab.errors import UserError
from searchlab.models import build_model
from searchlab.train import total_epochs

CKA_DIR = "cka"


# ---- which trials, which comparisons --------------------------------------------------------

def study_trials(experiment_dir):
    """{group: {label: trial_dir}} of the finished trials that take part in a CKA study.

    Read from the checkpoints, which trials write straight to storage, so that this is current
    while the sweep runs.
    """
    groups = {}
    for trial_dir in sorted(glob.glob(os.path.join(experiment_dir, "*", ""))):
        record = newest_record(trial_dir)
        if record is None:
            continue
        config = record["config"]
        label = config["cka"]["label"]
        if label is not None and record["epoch"] >= total_epochs(config):
            groups.setdefault(config["cka"]["group"], {})[label] = trial_dir.rstrip(os.sep)
    return groups


def newest_record(trial_dir):
    """The config and last metrics stored with the trial's newest checkpoint, or None."""
    folder = checkpoint.newest(trial_dir)
    return checkpoint.read_record(folder) if folder else None


def augmentation_of(config):
    """The augmentation a study run belongs to: ``cka.augmentation``, else its label (configs
    resolved before the key existed have none)."""
    cka = config["cka"]
    return cka.get("augmentation") or cka["label"]


def reference_pairs(references):
    """Every pair (ri, rj), i < j, of a group's references, checked."""
    references = list(references)
    if len(references) < 2 or len(set(references)) < len(references):
        raise UserError(f"cka.references must name two or more distinct labels, got {references!r}")
    return list(itertools.combinations(references, 2))


def pairs(labels, references):
    """The comparisons a group needs, given the labels that have finished so far: every pair of
    references, and each other run against every reference."""
    found = reference_pairs(references)
    if not set(references) <= set(labels):
        return []  # every comparison is against all references: wait for them
    for label in sorted(labels):
        if label not in references:
            found += [(ref, label) for ref in references]
    return found


def run_impact(load, references, label):
    """Per-layer impact of the run ``label``: cka_impact averaged over every reference pair.
    ``load(a, b)`` gives the CKA matrix of the comparison (a, b)."""
    return np.mean([cka_impact(load(a, b), load(a, label), load(b, label))
                    for a, b in reference_pairs(references)], axis=0)


def spread(values):
    """(mean, sample std, n) along the first axis; std is nan for a single value."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    return values.mean(0), (values.std(0, ddof=1) if n > 1 else np.full_like(values[0], math.nan)), n


def result_path(experiment_dir, group, a, b):
    return os.path.join(experiment_dir, CKA_DIR, str(group), f"{a}__{b}.npz")


def pending(experiment_dir):
    """[(group, a, b, trial_dir_a, trial_dir_b)] of comparisons not yet on disk."""
    todo = []
    for group, labels in study_trials(experiment_dir).items():
        references = newest_record(next(iter(labels.values())))["config"]["cka"]["references"]
        for a, b in pairs(labels, references):
            if not os.path.exists(result_path(experiment_dir, group, a, b)):
                todo.append((group, a, b, labels[a], labels[b]))
    return todo


# ---- one comparison -------------------------------------------------------------------------

def best_model(trial_dir, device="cpu"):
    """(model at its best-validation epoch, trial config, best metrics)."""
    folder = checkpoint.newest(trial_dir)
    config = checkpoint.read_record(folder)["config"]
    state = checkpoint.load_state(folder)
    data = config["data"]
    channels = 1 if data["dataset"] == "digits" else 3
    model = build_model(config["model"]["name"], DATASETS[data["dataset"]], in_channels=channels)
    model.load_state_dict(state["best"]["model"])
    return model.to(device).eval(), config, state["best"]


def compare(experiment_dir, group, a, b, trial_dir_a, trial_dir_b, device="cpu"):
    """CKA of every conv-layer pair of two trials' best models; written atomically to an .npz."""
    model_a, config, _ = best_model(trial_dir_a, device)
    model_b, _, _ = best_model(trial_dir_b, device)
    d, cka = config["data"], config["cka"]
    # Both trials share the data config apart from augmentation, so this is their validation split.
    data = load_dataset(d["dataset"], val_size=d["val_size"], train_size=d["train_size"],
                        test_size=1, split_seed=d["split_seed"], root=d["root"])
    n = min(cka["images"], len(data.val))
    non_blocking = config.get("speed", {}).get("non_blocking", False)  # configs of older runs have no speed
    loader = [(move(normalize(x, data.mean, data.std), device, non_blocking), y)
              for x, y in batches(data.val[:n], cka["batch_size"],
                                  drop_last=n >= cka["batch_size"])]  # unbiased HSIC needs full batches
    matrix, names_a, names_b = cka_matrix(model_a, model_b, loader, unbiased=True, device=device)
    path = result_path(experiment_dir, group, a, b)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), suffix=".npz", delete=False) as f:
        np.savez(f, cka=matrix, layers_a=np.array(names_a), layers_b=np.array(names_b), images=n)
    os.replace(f.name, path)  # a comparison interrupted mid-write is simply redone
    return path


def run_pending(experiment_dir, device="cpu"):
    """Compute every missing comparison in this process; return how many were computed."""
    todo = pending(experiment_dir)
    for group, a, b, dir_a, dir_b in todo:
        compare(experiment_dir, group, a, b, dir_a, dir_b, device)
    return len(todo)


# ---- report ---------------------------------------------------------------------------------

def report(experiment_dir):
    """Heatmaps, impact against depth, the impact curves and the table, into EXPERIMENT/cka/.
    Returns the table rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, curves = [], []
    for group, labels in sorted(study_trials(experiment_dir).items(), key=lambda kv: str(kv[0])):
        # From the checkpoints' trial.json: the table needs no model weights loaded.
        records = {label: newest_record(trial_dir) for label, trial_dir in labels.items()}
        references = list(next(iter(records.values()))["config"]["cka"]["references"])
        done = lambda a, b: os.path.exists(result_path(experiment_dir, group, a, b))  # noqa: E731
        load = lambda a, b: np.load(result_path(experiment_dir, group, a, b), allow_pickle=False)["cka"]  # noqa: E731
        between = reference_pairs(references)
        if not set(references) <= set(labels) or not all(done(a, b) for a, b in between):
            continue
        runs = {}  # augmentation -> its runs' labels that have every comparison
        for label in sorted(labels):
            if label not in references and all(done(ref, label) for ref in references):
                runs.setdefault(augmentation_of(records[label]["config"]), []).append(label)
        folder = os.path.join(experiment_dir, CKA_DIR, str(group))
        ref1, ref2 = between[0]

        # All-layer-pairs heatmaps: the first reference pair, then ref1 vs each augmentation's first run.
        shown = [(f"{ref1} vs {ref2}", load(ref1, ref2))] + [(f"{ref1} vs {ls[0]}", load(ref1, ls[0]))
                                                              for _, ls in sorted(runs.items())]
        cols = min(4, len(shown))
        fig, axes = plt.subplots((len(shown) + cols - 1) // cols, cols, figsize=(3.2 * cols, 3.2 * ((len(shown) + cols - 1) // cols)),
                                 squeeze=False)
        low = min(0.0, *(float(np.nanmin(m)) for _, m in shown))  # unbiased CKA can dip below 0
        for ax, (title, matrix) in zip(axes.flat, shown):
            image = ax.imshow(matrix, origin="lower", vmin=low, vmax=1, cmap="magma")
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("layer", fontsize=8)
            ax.set_ylabel("layer", fontsize=8)
        for ax in axes.flat[len(shown):]:
            ax.axis("off")
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="cka")
        fig.suptitle(f"CKA between conv layers, {group}")
        fig.savefig(os.path.join(folder, "cka_heatmaps.png"), dpi=100)
        plt.close(fig)

        # Impact against normalised depth per augmentation: mean over its runs, ± std as a band.
        depth = layer_depths(len(load(ref1, ref2)))
        fig, ax = plt.subplots(figsize=(7, 4))
        for augmentation, labels_of in sorted(runs.items()):
            impacts = [run_impact(load, references, label) for label in labels_of]
            mean, std, n = spread(impacts)
            line, = ax.plot(depth, mean, marker=".", label=f"{augmentation} (n={n})")
            if n > 1:
                ax.fill_between(depth, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
            curves += [{"group": group, "augmentation": augmentation, "n": n, "depth": float(d),
                        "mean": float(m), "std": "" if n < 2 else float(s)} for d, m, s in zip(depth, mean, std)]
            rows.append(table_row(group, augmentation, [records[label] for label in labels_of],
                                  [float(np.mean(impact)) for impact in impacts]))
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel("normalised depth")
        ax.set_ylabel("cka_impact")
        spread_note = " (mean ± std over seeds)" if any(len(ls) > 1 for ls in runs.values()) else ""
        ax.set_title(f"Impact of each augmentation per layer, {group}{spread_note}", fontsize=10)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(os.path.join(folder, "cka_impact.png"), dpi=100)
        plt.close(fig)
        rows.append(table_row(group, "none", [records[ref] for ref in references], None))

    if rows:
        folder = os.path.join(experiment_dir, CKA_DIR)
        os.makedirs(folder, exist_ok=True)
        for name, table in (("cka_table.csv", rows), ("impact_curves.csv", curves)):
            with open(os.path.join(folder, name), "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(table[0]) if table else ["group"])
                writer.writeheader()
                writer.writerows(table)
        with open(os.path.join(folder, "cka_table.md"), "w") as f:
            f.write("Mean ± sample std over the runs of each augmentation (n runs, different seeds). "
                    "test_acc_at_best: test accuracy at the best-validation epoch; cka_impact: a run's "
                    "impact averaged over its layers and over the reference pairs.\n\n")
            f.write("| group | augmentation | test_acc_at_best | cka_impact |\n|---|---|---|---|\n")
            f.writelines(f"| {r['group']} | {r['augmentation']} | {cell(r, 'test_acc_at_best')} | "
                         f"{cell(r, 'cka_impact')} |\n" for r in rows)
    return rows


def table_row(group, augmentation, records, impact_means):
    """One table row: n runs, their test accuracy and layer-mean impact (None: the references)."""
    row = {"group": group, "augmentation": augmentation, "n": len(records)}
    row.update(stats("test_acc_at_best", [r["metrics"]["test_acc_at_best"] for r in records]))
    row.update(stats("cka_impact", impact_means) if impact_means is not None
               else {"cka_impact_mean": "", "cka_impact_std": ""})
    return row


def stats(name, values):
    mean, std, _ = spread(values)
    return {f"{name}_mean": float(mean), f"{name}_std": "" if math.isnan(std) else float(std)}


def cell(row, name):
    """'mean ± std (n)' of a table row's value ``name``; '-' when it has none."""
    mean, std = row[f"{name}_mean"], row[f"{name}_std"]
    if mean == "":
        return "-"
    return f"{mean:.4f} ({row['n']})" if std == "" else f"{mean:.4f} ± {std:.4f} ({row['n']})"
