"""The CKA study on an experiment directory: which comparisons, running one, and the report.

Reads only artifacts on disk (each trial's ``searchlab_trial.json`` and checkpoints), so the same code
serves the post-trial Ray actors and ``searchlab cka`` on a finished experiment.

Per group (e.g. one architecture) with references none1 and none2 (``cka.references``): the pairs
(none1, none2) and (none_k, aug) for each other label; CKA between every pair of conv layers on the
first ``cka.images`` validation images, with the models at their best-validation epoch.
"""
import csv
import glob
import os
import tempfile

import numpy as np

from searchlab import checkpoint
from searchlab.analysis.cka import cka_impact, cka_matrix, layer_depths
from searchlab.data import DATASETS, batches, load_dataset, move, normalize
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


def pairs(labels, references):
    """The comparisons a group needs, given the labels that have finished so far."""
    ref1, ref2 = references
    if ref1 not in labels or ref2 not in labels:
        return []  # every comparison is against both references: wait for them
    found = [(ref1, ref2)]
    for label in sorted(labels):
        if label not in references:
            found += [(ref1, label), (ref2, label)]
    return found


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


def _test_acc_at_best(trial_dir):
    # From the checkpoint's trial.json: the table needs no model weights loaded.
    return round(newest_record(trial_dir)["metrics"]["test_acc_at_best"], 4)


# ---- report ---------------------------------------------------------------------------------

def report(experiment_dir):
    """Heatmaps, impact against depth and a table per group, into EXPERIMENT/cka/. Returns the
    table rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for group, labels in sorted(study_trials(experiment_dir).items(), key=lambda kv: str(kv[0])):
        ref1, ref2 = newest_record(next(iter(labels.values())))["config"]["cka"]["references"]
        load = lambda a, b: np.load(result_path(experiment_dir, group, a, b), allow_pickle=False)["cka"]  # noqa: E731
        if not os.path.exists(result_path(experiment_dir, group, ref1, ref2)):
            continue
        ref = load(ref1, ref2)
        augs = [l for l in sorted(labels) if l not in (ref1, ref2)
                and os.path.exists(result_path(experiment_dir, group, ref2, l))]
        folder = os.path.join(experiment_dir, CKA_DIR, str(group))

        # All-layer-pairs heatmaps: none1 vs none2, then none1 vs each augmentation.
        shown = [(f"{ref1} vs {ref2}", ref)] + [(f"{ref1} vs {l}", load(ref1, l)) for l in augs]
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

        # Impact against normalised depth, per augmentation.
        depth = layer_depths(len(ref))
        fig, ax = plt.subplots(figsize=(7, 4))
        for label in augs:
            impact = cka_impact(np.diag(ref), np.diag(load(ref1, label)), np.diag(load(ref2, label)))
            ax.plot(depth, impact, marker=".", label=label)
            rows.append({"group": group, "label": label, "test_acc_at_best": _test_acc_at_best(labels[label]),
                         "cka_impact_mean": round(float(np.mean(impact)), 4)})
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel("normalised depth")
        ax.set_ylabel("cka_impact")
        ax.set_title(f"Impact of each augmentation per layer, {group}")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(os.path.join(folder, "cka_impact.png"), dpi=100)
        plt.close(fig)
        for ref_label in (ref1, ref2):
            rows.append({"group": group, "label": ref_label,
                         "test_acc_at_best": _test_acc_at_best(labels[ref_label]), "cka_impact_mean": ""})

    if rows:
        os.makedirs(os.path.join(experiment_dir, CKA_DIR), exist_ok=True)
        with open(os.path.join(experiment_dir, CKA_DIR, "cka_table.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        with open(os.path.join(experiment_dir, CKA_DIR, "cka_table.md"), "w") as f:
            f.write("| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n")
            f.writelines("| " + " | ".join(str(v) for v in r.values()) + " |\n" for r in rows)
    return rows
