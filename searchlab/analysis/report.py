"""One page per experiment: ``searchlab report EXPERIMENT [--out DIR] [--format md|html]``.

Reads only the experiment directory: each trial's folder (``searchlab_trial.json``, Tune's
``result.json``, checkpoints through ``searchlab.checkpoint``), Tune's experiment state (which trials
exist and their status) and what the studies wrote. It never asks a Ray cluster, so it works on a
copied folder and on a sweep that is still running.

The page:
    progress   trials finished out of planned, running, and the time left: the reports still to come
               x the median seconds a report took / the trials running now (one when none runs)
    study      the study the trial configs belong to (``STUDIES``: deepaa, cka, refine, splitbn), with
               that study's own tables and figures (its figure function writes them into EXPERIMENT,
               as ``searchlab figures`` does); a plain sweep gets the generic section instead: the
               config keys that vary against the final metrics, and the learning curves
    cost       every row: the device-hours its trials held (each report's ``time_this_iter_s`` x the
               trial's CPU or GPU request: GPU-hours when the trial asked for a GPU, else CPU-hours,
               finished or not) and the total
    published  where a row's setting is a paper's (``PUBLISHED``), the paper's number beside ours

Statistics: a row is every trial that differs only in ``seed`` (or shares a study label). Each cell
is mean ± sample standard deviation (ddof 1) over the row's finished trials, with n; a single run
shows n=1 and no spread. Each study's table says its own statistic (refinement: the median of the
last 10 epochs, as the paper).

Written to OUT (default EXPERIMENT/report/): report.md with its figures beside it in figures/, or one
self-contained report.html (figures embedded, sortable tables). The figures also go to the
experiment's TensorBoard events (run "report", one image per figure, step = finished trials).
"""
import base64
import csv
import glob
import html
import json
import os
import shutil
import statistics
import time
from typing import NamedTuple

from searchlab import checkpoint
from searchlab.analysis.figures import differing_keys, figure_folder, flat, result_rows, show, spread
from searchlab.errors import UserError
from searchlab.train import total_epochs

REPORT_DIR = "report"
# A folder of the experiment holding one of these is a trial's (figures/, cka/, report/ are not).
TRIAL_FILES = ("result.json", "searchlab_trial.json", "checkpoint_*")
RECORD = "searchlab_sweep.json"  # sweep.RECORD, read here without importing Ray
# The final metrics the generic section shows, in this order, when some trial reports them.
FINAL = ("test_acc_at_best", "best_val_acc", "test_acc", "test_acc_median10", "train_loss")
# The config keys the generic section's table always starts with.
ALWAYS_SHOWN = ("data.dataset", "model.name")
# The learning curves of the generic section: (metric, title).
CURVES = (("val_acc", "validation accuracy"), ("train_loss", "training loss"))
# Config keys that never set a row apart: repeats (seed) and records nobody reads (search).
NOT_A_SETTING = ("seed", "search", "device", "threads")

# Published results a row is compared with when its setting is the paper's: the config values that
# must match (dotted keys of the resolved config; "pipeline" is the list of op names in order), the
# number (test error, %, CIFAR-10) and where it is printed.
HE = {"data.dataset": "cifar10", "data.train_size": None, "pipeline": ["flip", "pad_crop"], "augment.mix": None,
      "regime": "standard", "optim.schedule": "step", "optim.weight_decay": 0.0001, "optim.lr": 0.1}
AA = {"data.dataset": "cifar10", "data.train_size": None, "augment.mix": None, "regime": "standard",
      "optim.schedule": "cosine", "optim.weight_decay": 0.0005, "optim.epochs": 200}
PUBLISHED = [
    *({"setting": {**HE, "model.name": f"resnet{depth}"}, "test_err": err,
       "source": f"He et al. 2016, Deep residual learning, Table 6 (ResNet-{depth})"}
      for depth, err in ((20, 8.75), (32, 7.51), (44, 7.17), (56, 6.97), (110, 6.43))),
    *({"setting": {**AA, "model.name": model, "pipeline": pipeline}, "test_err": err,
       "source": f"Cubuk et al. 2019, AutoAugment, Table 2 ({name}, {column})"}
      for model, name, errs in (("wrn40_2", "Wide-ResNet-40-2", (5.3, 4.1, 3.7)),
                                ("wrn28_10", "Wide-ResNet-28-10", (3.9, 3.1, 2.6)))
      for (pipeline, column), err in zip(((["flip", "pad_crop"], "baseline"),
                                          (["flip", "pad_crop", "cutout"], "Cutout"),
                                          (["flip", "pad_crop", "autoaugment", "cutout"], "AutoAugment")), errs)),
]


class Trial(NamedTuple):
    name: str          # its folder
    params: dict       # its config as the sweep gave it (Tune's), which sets the rows apart
    config: dict       # the resolved config it recorded (its params until it has)
    results: list      # its reports, in order (result.json)
    status: str        # Tune's: PENDING, RUNNING, TERMINATED, ERROR, PAUSED
    reports: int       # the reports it makes when it finishes (0: not recorded)
    resources: dict    # {"cpu": c, "gpu": g} it held

    @property
    def finished(self):
        return self.status == "TERMINATED" or (self.reports and len(self.results) >= self.reports)

    @property
    def last(self):
        return self.results[-1] if self.results else {}

    @property
    def device(self):
        return "GPU" if self.resources.get("gpu") else "CPU"

    @property
    def hours(self):
        """Device-hours held: seconds between reports (set-up in the first) x the devices asked for."""
        seconds = sum(r.get("time_this_iter_s", 0.0) for r in self.results)
        return seconds / 3600 * (self.resources.get("gpu") or self.resources.get("cpu", 1.0))


class Table(NamedTuple):
    title: str
    columns: list
    rows: list         # lists of cells (str or number), one per column
    note: str = ""


class Section(NamedTuple):
    title: str
    text: str
    tables: list
    figures: list      # paths of PNG files


# ---- reading the experiment -------------------------------------------------------------------

def read_trials(experiment):
    """The experiment's trials: those Tune knows and those with a folder."""
    states = tune_state(experiment)
    trials = []
    names = sorted({*states, *(os.path.basename(os.path.dirname(p)) for pattern in TRIAL_FILES
                               for p in glob.glob(os.path.join(experiment, "*", pattern)))})
    for name in names:
        folder = os.path.join(experiment, name)
        record = {}
        if os.path.isfile(os.path.join(folder, "searchlab_trial.json")):
            with open(os.path.join(folder, "searchlab_trial.json")) as f:
                record = json.load(f)
        path = os.path.join(folder, "result.json")
        results = result_rows(path) if os.path.isfile(path) else []  # none yet: a trial starting
        params = (states.get(name, {}).get("config") or (results[-1].get("config") if results else None)
                  or record.get("config") or {})
        config = record.get("config")
        if config is None:  # a trial of an older version, or one that has not started
            newest = checkpoint.newest(folder) if os.path.isdir(folder) else None
            config = checkpoint.read_record(newest)["config"] if newest else params
        # Trials of older versions did not record it: a training trial's epochs.
        reports = record.get("reports") or (total_epochs(config) if "optim" in config else 0)
        done = bool(reports) and len(results) >= reports
        status = states.get(name, {}).get("status") or ("TERMINATED" if done else "RUNNING" if results else "PENDING")
        trials.append(Trial(name, params, config, results, status, reports,
                            record.get("resources", {"cpu": 1.0, "gpu": 0.0})))
    return trials


def tune_state(experiment):
    """{trial folder: {"status", "config"}} from Tune's newest experiment state ({} before its first)."""
    paths = sorted(glob.glob(os.path.join(experiment, "experiment_state-*.json")))
    if not paths:
        return {}
    try:
        with open(paths[-1]) as f:
            data = json.load(f)
    except json.JSONDecodeError:  # being written at this moment: the folders still tell most
        return {}
    found = {}
    for entry, _ in data["trial_data"]:
        trial = json.loads(entry)
        config = trial.get("config")
        found[trial["relative_logdir"]] = {"status": trial["status"], "config": config if isinstance(config, dict) else {}}
    return found


def progress(trials, planned=None):
    """{"finished", "planned", "running", "seconds_left"} (seconds_left None when nothing is known)."""
    planned = max(planned or 0, len(trials))
    finished = sum(t.finished for t in trials)
    running = sum(t.status == "RUNNING" for t in trials)
    per_report = [r["time_this_iter_s"] for t in trials for r in t.results if "time_this_iter_s" in r]
    known = [t.reports for t in trials if t.reports]
    typical = statistics.median(known) if known else None
    left = None
    if per_report and typical:
        to_come = sum(max((t.reports or typical) - len(t.results), 0) for t in trials if not t.finished)
        to_come += typical * (planned - len(trials))  # trials not yet created (a searcher's later ones)
        left = to_come * statistics.median(per_report) / max(running, 1)
    return {"finished": finished, "planned": planned, "running": running, "seconds_left": left}


def study_of(trials):
    """The name of the study the trials belong to (a ``STUDIES`` key), or None for a plain sweep."""
    for name, (belongs, _) in STUDIES.items():
        if any(belongs(t.config) for t in trials):
            return name
    return None


# ---- rows over seeds ---------------------------------------------------------------------------

def setting(config):
    """A trial's config without what does not set a row apart, as a hashable key."""
    return json.dumps({k: v for k, v in flat(config).items() if k not in NOT_A_SETTING}, sort_keys=True, default=str)


def by_setting(trials):
    """({row label: [trials]}, the config keys that set rows apart): trials that differ only in their
    seed share a row, labelled by those keys' values."""
    groups = {}
    for t in trials:
        groups.setdefault(setting(t.params), []).append(t)
    keys = differing_keys([ts[0].params for ts in groups.values()], exclude=NOT_A_SETTING)
    return {", ".join(f"{k}={short(flat(ts[0].params).get(k))}" for k in keys) or "all": ts
            for ts in groups.values()}, keys


def short(value):
    """A config value as a table cell: op lists by their names."""
    if isinstance(value, list) and all(isinstance(v, dict) and "op" in v for v in value):
        return "+".join(v["op"] for v in value) or "none"
    return "-" if value is None else show(value)


def cell(numbers):
    """"mean ± std (n=k)" over ``numbers``; "-" when there are none."""
    mean, std, n = spread(numbers)
    if not n:
        return "-"
    return f"{mean:.4g} (n=1)" if n == 1 else f"{mean:.4g} ± {std:.3g} (n={n})"


def finals(trials, metric):
    return [float(t.last[metric]) for t in trials if t.finished and isinstance(t.last.get(metric), (int, float))]


def device_hours(trials):
    """{device: (hours, trials)} of the trials, devices in name order."""
    found = {}
    for t in sorted(trials, key=lambda t: t.device):
        hours, count = found.get(t.device, (0.0, 0))
        found[t.device] = (hours + t.hours, count + 1)
    return found


def cost_cell(trials):
    """"1.23 CPU-h (4 trials)" of the trials; GPU-hours when any asked for a GPU."""
    return ", ".join(f"{hours:.3g} {device}-h" for device, (hours, _) in device_hours(trials).items()) + \
        f" ({len(trials)} trial{'s' * (len(trials) != 1)})"


def published_for(config):
    """The PUBLISHED entry whose setting the config is, or None."""
    values = flat(config)
    pipeline = config.get("augment", {}).get("pipeline")
    values["pipeline"] = [op["op"] for op in pipeline] if isinstance(pipeline, list) else pipeline
    for entry in PUBLISHED:
        if all(values.get(key, None) == want for key, want in entry["setting"].items()):
            return entry
    return None


# ---- sections ----------------------------------------------------------------------------------

def generic_section(experiment, trials, out):
    """The config keys that set rows apart against the final metrics, one row per setting; the
    learning curves."""
    groups, keys = by_setting(trials)
    keys = [k for k in ALWAYS_SHOWN if k not in keys] + keys  # what was trained on what, even when it is one thing
    metrics = [m for m in FINAL if any(finals(ts, m) for ts in groups.values())]
    # Judged by a trial that has recorded its resolved config (one that has started), if any.
    published = {label: published_for(max(ts, key=lambda t: bool(t.results)).config) for label, ts in groups.items()}
    compared = ["test error (%)", "published (%)", "source"] if any(published.values()) else []
    rows = []
    for label, ts in groups.items():
        config = flat(ts[0].params)
        row = [*(short(config.get(k)) for k in keys), f"{sum(t.finished for t in ts)}/{len(ts)}",
               *(cell(finals(ts, m)) for m in metrics)]
        if compared:
            entry = published[label] or {}
            row += [cell([100 * (1 - v) for v in finals(ts, "test_acc_at_best")]), entry.get("test_err", ""),
                    entry.get("source", "")]
        rows.append(row + [cost_cell(ts)])
    table = Table("Final metrics per setting", [*keys, "finished", *metrics, *compared, "cost"], rows,
                  "mean ± sample std (ddof 1) over the setting's finished trials (its seeds), with n; "
                  "test error from test_acc_at_best")
    return Section("Sweep", f"{len(trials)} trials in {len(groups)} setting{'s' * (len(groups) != 1)}.", [table],
                   curve_figures(groups, out))


def curve_figures(groups, out):
    """curves.png: each setting's mean curve over its trials (band: ± std) against the report."""
    import numpy as np

    plt, folder, colour, written, save = figure_folder(out, groups)
    fig, axes = plt.subplots(1, len(CURVES), figsize=(6 * len(CURVES), 4), squeeze=False)
    for ax, (metric, title) in zip(axes.flat, CURVES):
        for label, ts in groups.items():
            curves = [[r[metric] for r in t.results if metric in r] for t in ts]
            curves = [c for c in curves if c]
            if not curves:
                continue
            length = min(len(c) for c in curves)  # running trials: as far as all have come
            stack = np.array([c[:length] for c in curves], dtype=float)
            x = np.arange(1, length + 1)
            mean = stack.mean(0)
            ax.plot(x, mean, color=colour[label], label=f"{label} (n={len(curves)})")
            if len(curves) > 1:
                std = stack.std(0, ddof=1)
                ax.fill_between(x, mean - std, mean + std, color=colour[label], alpha=0.2)
        ax.set_xlabel("epoch (report)")
        ax.set_title(title)
        if 0 < len(ax.lines) <= 12:  # a legend of more would cover the curves; the table names them
            ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, "curves.png")
    return written


def study_section(name, experiment, trials, out):
    """A study's tables (read from the CSV files its figure function writes) and figures, with a cost
    column joined by the table's label."""
    _, build = STUDIES[name]
    title, text, written, tables, label_of = build(experiment, trials)
    by_label = {}
    for t in trials:
        by_label.setdefault(label_of(t), []).append(t)
    shown = []
    for path, note in tables:
        if not os.path.exists(path):
            continue
        columns, rows = read_csv_table(path)
        if "label" in columns or "augmentation" in columns:
            key = columns.index("label" if "label" in columns else "augmentation")
            group = columns.index("group") if "group" in columns else None
            columns = columns + ["cost"]
            rows = [row + [cost_cell(by_label.get((row[group] if group is not None else None, row[key]), []))]
                    for row in rows]
        shown.append(Table(os.path.basename(path), columns, rows, note))
    figures = sorted(p for p in written if p.endswith(".png"))
    return Section(title, text, shown, figures)


def read_csv_table(path):
    """(columns, rows) of a study's CSV, with each metric's _mean, _std and _n columns as one cell."""
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    header, body = lines[0], lines[1:]
    columns, makers = [], []
    for i, name in enumerate(header):
        base = name[:-5] if name.endswith("_mean") else None
        if base is not None and f"{base}_std" in header:
            j = header.index(f"{base}_std")
            # Its own count, else the row's (a table whose metrics all count the same trials).
            k = next((header.index(c) for c in (f"{base}_n", "n") if c in header), None)
            columns.append(base)
            makers.append(lambda row, i=i, j=j, k=k: joined(row[i], row[j], row[k] if k is not None else ""))
        elif name.endswith(("_std", "_n")) and name.rsplit("_", 1)[0] + "_mean" in header:
            continue
        else:
            columns.append(name)
            makers.append(lambda row, i=i: number(row[i]))
    return columns, [[make(row) for make in makers] for row in body]


def number(text):
    """A CSV cell, a float shortened to 4 significant digits."""
    try:
        return text if float(text).is_integer() else f"{float(text):.4g}"
    except ValueError:
        return text


def joined(mean, std, n):
    if mean == "":
        return "-"
    text = f"{float(mean):.4g}" + (f" ± {float(std):.3g}" if std not in ("", "nan") else "")
    return text + (f" (n={n})" if n else "")


# ---- the studies ---------------------------------------------------------------------------------
# Each: (whether a trial config belongs to it, build(experiment, trials) -> (title, text, figure paths,
# [(csv path, note)], label_of(trial) -> the (group, label) its table rows are keyed by)).

def _figures_label(experiment, trials):
    from searchlab.analysis.figures import finished_trials

    labels = {t.name: t.label for t in finished_trials(experiment)}
    return lambda t: (None, labels.get(t.name, t.config.get("label")))


def _splitbn(experiment, trials):
    from searchlab.analysis.figures import FIGURES_DIR, splitbn_figures

    splitbn_figures(experiment)
    folder = os.path.join(experiment, FIGURES_DIR)
    # With the Pareto front the sweep drew at its end (its objectives are the search space's).
    return ("Split BatchNorm (Merchant et al.)", "Percent, at the best-validation epoch.",
            glob.glob(os.path.join(folder, "*.png")),
            [(os.path.join(folder, "table.csv"), "mean ± sample std over the label's seeds (ddof 1), n"),
             (os.path.join(folder, "pareto.csv"), "the trials on the Pareto front of the search's two objectives")],
            _figures_label(experiment, trials))


def _refine(experiment, trials):
    from searchlab.analysis.figures import FIGURES_DIR
    from searchlab.analysis.refinement import refine_figures

    written = refine_figures(experiment)
    folder = os.path.join(experiment, FIGURES_DIR)
    return ("Refinement (He et al. 2019)", "Percent; test_acc_median10 is the median of the last 10 epochs' "
            "test accuracy, the paper's statistic.", written,
            [(os.path.join(folder, "table.csv"), "mean ± sample std over the label's seeds (ddof 1), n")],
            _figures_label(experiment, trials))


def _deepaa(experiment, trials):
    from searchlab.analysis.deepaa_figures import deepaa_figures
    from searchlab.analysis.figures import FIGURES_DIR

    written = deepaa_figures(experiment)
    folder = os.path.join(experiment, FIGURES_DIR)
    return ("Deep AutoAugment (Zheng et al. 2022)", "The search cost per layer is the paper's Table 4.", written,
            [(os.path.join(folder, "deepaa_table.csv"), "percent; mean ± sample std over the label's seeds"),
             (os.path.join(folder, "deepaa_cost.csv"), "device-hours per layer of each search")],
            lambda t: (None, t.config.get("label")))


def _cka(experiment, trials):
    from searchlab.analysis import study

    study.report(experiment)
    folder = os.path.join(experiment, study.CKA_DIR)
    written = glob.glob(os.path.join(folder, "*", "*.png"))
    pending = len(study.pending(experiment))
    return ("CKA: which layers do augmentations change?",
            f"{pending} comparison(s) not computed yet." if pending else "Every comparison computed.", written,
            [(os.path.join(folder, "cka_table.csv"), "mean ± sample std over the augmentation's runs (n); a run's "
              "impact is averaged over the reference pairs")],
            _cka_row)


def _cka_row(trial):
    """(group, row) of a CKA study run in the study's table: the references share the row "none"."""
    from searchlab.analysis import study

    cka = trial.config.get("cka") or {}
    if cka.get("label") is None:  # not (yet) a run of the study
        return None, None
    return str(cka["group"]), "none" if cka["label"] in cka.get("references", ()) else study.augmentation_of(trial.config)


def _is_split(config):
    return config.get("regime") == "splitbn" or any(p.get("regime") == "splitbn" for p in config.get("phases", []))


def _is_refined(config):
    from searchlab.analysis.refinement import is_refined

    return "refine" in config and is_refined(config)


STUDIES = {
    "deepaa": (lambda c: "deepaa" in c or "proxy" in c, _deepaa),
    "cka": (lambda c: c.get("cka", {}).get("label") is not None, _cka),
    "refine": (_is_refined, _refine),
    "splitbn": (_is_split, _splitbn),
}


# ---- the report ----------------------------------------------------------------------------------

def build(experiment, out):
    """(title, progress, sections, trials) of the experiment; figures drawn into ``out``."""
    if not os.path.isfile(os.path.join(experiment, RECORD)):
        raise UserError(f"{experiment} is not a searchlab experiment (no {RECORD}): give STORAGE/NAME, "
                        "the folder `searchlab sweep` printed")
    with open(os.path.join(experiment, RECORD)) as f:
        record = json.load(f)
    trials = read_trials(experiment)
    state = progress(trials, record.get("trials"))
    study = study_of(trials)
    sections = [study_section(study, experiment, trials, out) if study else generic_section(experiment, trials, out)]
    total = Table("Total", ["device", "device-hours", "trials"],
                  [[device, f"{hours:.4g}", count] for device, (hours, count) in device_hours(trials).items()],
                  "each report's time_this_iter_s x the trial's CPU or GPU request")
    sections.append(Section("Cost", "", [total], []))
    return {"title": f"{record.get('name', os.path.basename(experiment))}: {record.get('space')}",
            "study": study or "sweep", "progress": state, "sections": sections, "trials": trials}


def progress_line(state):
    text = f"{state['finished']} of {state['planned']} trials finished, {state['running']} running"
    if state["finished"] < state["planned"] and state["seconds_left"] is not None:
        text += f"; about {duration(state['seconds_left'])} left"
    return text


def duration(seconds):
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{max(minutes, 1)} min"


def write(experiment, out=None, fmt="md", tensorboard=True):
    """Write the report; return its path and what it holds (``build``)."""
    experiment = os.path.abspath(os.path.expanduser(str(experiment)))
    out = os.path.abspath(out or os.path.join(experiment, REPORT_DIR))
    os.makedirs(out, exist_ok=True)
    report = build(experiment, out)
    if fmt == "html":
        path = write_html(report, out)
    elif fmt == "md":
        path = write_markdown(report, out)
    else:
        raise UserError(f"unknown report format {fmt!r}; valid: md, html")
    if tensorboard:
        to_tensorboard(report, experiment)
    return path, report


def figures_of(report):
    return [p for s in report["sections"] for p in s.figures]


def write_markdown(report, out):
    folder = os.path.join(out, "figures")
    os.makedirs(folder, exist_ok=True)
    lines = [f"# {report['title']}", "", f"Study: {report['study']}. {progress_line(report['progress'])}.", ""]
    for section in report["sections"]:
        lines += [f"## {section.title}", ""] + ([section.text, ""] if section.text else [])
        for table in section.tables:
            lines += [f"**{table.title}**" + (f" ({table.note})" if table.note else ""), "",
                      "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
            lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in table.rows]
            lines.append("")
        for path in section.figures:
            name = unique_name(folder, path)
            if os.path.abspath(path) != os.path.abspath(os.path.join(folder, name)):
                shutil.copyfile(path, os.path.join(folder, name))
            lines += [f"![{name}](figures/{name})", ""]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def unique_name(folder, path):
    """The figure's file name in the report's figures/, prefixed by its group folder when it has one."""
    parent = os.path.basename(os.path.dirname(path))
    return os.path.basename(path) if parent in ("figures", "cka") else f"{parent}_{os.path.basename(path)}"


# Sorting a table by clicking a column header; numbers by value (a cell's first number), text as text.
SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach((th, column) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
  const up = th.dataset.order !== "up"; th.dataset.order = up ? "up" : "down";
  const key = r => { const t = r.cells[column].textContent, n = parseFloat(t); return isNaN(n) ? t : n; };
  rows.sort((a, b) => { const x = key(a), y = key(b);
    return (typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : typeof x === "number" ? -1 : 1) * (up ? 1 : -1); });
  rows.forEach(r => body.appendChild(r));
}));
"""
STYLE = """
body { font-family: sans-serif; max-width: 1200px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; white-space: nowrap; }
.wide { overflow-x: auto; }  /* a table wider than the page scrolls by itself */
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th::after { content: " \\2195"; color: #999; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.note { color: #555; font-size: 0.85em; }
"""


def write_html(report, out):
    e = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(report['title'])}</title>"
             f"<style>{STYLE}</style></head><body>", f"<h1>{e(report['title'])}</h1>",
             f"<p>Study: {e(report['study'])}. {e(progress_line(report['progress']))}.</p>"]
    for section in report["sections"]:
        parts.append(f"<h2>{e(section.title)}</h2>" + (f"<p>{e(section.text)}</p>" if section.text else ""))
        for table in section.tables:
            parts.append(f"<h3>{e(table.title)}</h3>" + (f"<p class='note'>{e(table.note)}</p>" if table.note else ""))
            parts.append("<div class='wide'><table class='sortable'><thead><tr>" + "".join(f"<th>{e(str(c))}</th>" for c in table.columns)
                         + "</tr></thead><tbody>" + "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row)
                                                            + "</tr>" for row in table.rows) + "</tbody></table></div>")
        for path in section.figures:
            with open(path, "rb") as f:
                data = base64.b64encode(f.read()).decode()
            parts.append(f"<figure><img alt='{e(os.path.basename(path))}' src='data:image/png;base64,{data}'>"
                         f"<figcaption class='note'>{e(unique_name('', path))}</figcaption></figure>")
    parts.append(f"<script>{SORT_SCRIPT}</script></body></html>")
    path = os.path.join(out, "report.html")
    with open(path, "w") as f:
        f.write("\n".join(parts))
    return path


def to_tensorboard(report, experiment):
    """Each figure as an image in EXPERIMENT/report's events, at step = trials finished."""
    import matplotlib.image
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter

    figures = figures_of(report)
    if not figures:
        return
    with SummaryWriter(os.path.join(experiment, REPORT_DIR)) as writer:
        for path in figures:
            image = matplotlib.image.imread(path)[..., :3]  # PNG as floats in [0, 1], alpha dropped
            writer.add_image(f"report/{os.path.splitext(unique_name('', path))[0]}",
                             (image * 255).round().astype(np.uint8), report["progress"]["finished"],
                             dataformats="HWC", walltime=time.time())

