"""Evaluations: what a trial measures on its model. No Ray.

``EVALS`` maps a name to an ``Eval``: ``run(model, data, cfg)`` returns a dict of named metrics and
``metrics(cfg)`` lists the names of its numbers without running anything, so that a sweep can check
its metric before it starts. A run may also return arrays (a Fourier heatmap, a low-pass curve):
they are kept in the checkpoint, not reported to Tune. An evaluation reads its parameters from its
own config group, if it has one.

The ``eval`` group of a trial config says which evaluations run after every epoch
(``every_epoch``), which run once at the end (``at_end``) on which models (``at_end_models``: the
best, reported with the suffix ``_at_best``, and the last, ``_at_last``), and which every-epoch
metric picks the best epoch (``select``, ``mode``).

A split-BatchNorm model (``train.split_bn``) is evaluated at every lambda of ``splitbn.lambdas``
from two forward passes per batch (main and aux branch), its metrics named ``<metric>@lam<L>``
(``test_acc@lam0.5``); the plain names (``test_acc``) are those at the trial's own
``splitbn.lambda``.
"""
from contextlib import nullcontext
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from searchlab import corruptions, fourier
from searchlab.data import Split, batches, normalize
from searchlab.models import penultimate_features
from searchlab.splitbn import branch, interpolate
from searchlab.train import autocast, split_bn


class Eval(NamedTuple):
    run: Callable       # (model, data, cfg) -> {metric: number or array}
    metrics: Callable   # (cfg) -> the names of the numbers run() returns


# ---- predictions: one per lambda ----------------------------------------------------------------

def heads(cfg):
    """(suffix, lambda) of every prediction a trial reports: ("", None) for a plain model; for a
    split-BatchNorm one ("", splitbn.lambda) and ("@lam<L>", L) for each L in splitbn.lambdas."""
    if not split_bn(cfg):
        return [("", None)]
    s = cfg["splitbn"]
    return [("", s["lambda"]), *((f"@lam{lam:g}", lam) for lam in s["lambdas"])]


def predictor(model, cfg):
    """``predict(x) -> {suffix: logits}`` on normalised images, in eval mode without gradients.

    A split-BatchNorm model runs twice, main and aux branch, and every lambda is interpolated from
    those two outputs: a lambda costs no forward pass of its own. The forward passes run under the
    autocast of ``speed.amp``; the logits come back as float32, so losses are summed in float32.
    """
    suffixes = heads(cfg)

    @torch.no_grad()
    def predict(x):
        model.eval()
        with autocast(cfg["speed"]["amp"], x.device.type):
            if suffixes == [("", None)]:
                return {"": model(x).float()}
            with branch(model, "main"):
                main = model(x).float()
            with branch(model, "aux"):
                aux = model(x).float()
        return {suffix: interpolate(main, aux, lam, cfg["splitbn"]["interpolate"]) for suffix, lam in suffixes}

    return predict


def scores(predict, split, mean, std, batch_size=1000):
    """{suffix: (mean loss, accuracy)} of every prediction on a split of uint8 images."""
    loss, correct = {}, {}
    for x, y in batches(split, batch_size):
        for suffix, logits in predict(normalize(x, mean, std)).items():
            loss[suffix] = loss.get(suffix, 0.0) + F.cross_entropy(logits, y, reduction="sum").item()
            correct[suffix] = correct.get(suffix, 0) + (logits.argmax(1) == y).sum().item()
    n = max(len(split), 1)
    return {suffix: (loss[suffix] / n, correct[suffix] / n) for suffix in loss}


# ---- clean: validation and test splits ----------------------------------------------------------

def clean(model, data, cfg):
    """Loss and accuracy on the validation and test splits, unaugmented."""
    predict, metrics = predictor(model, cfg), {}
    for name in ("val", "test"):
        for suffix, (loss, acc) in scores(predict, getattr(data, name), data.mean, data.std).items():
            metrics[f"{name}_loss{suffix}"], metrics[f"{name}_acc{suffix}"] = loss, acc
    return {m: metrics[m] for m in clean_metrics(cfg)}


def clean_metrics(cfg):
    return [f"{name}_{kind}{suffix}" for suffix, _ in heads(cfg)
            for name in ("val", "test") for kind in ("loss", "acc")]


def train_clean(model, data, cfg):
    """Loss and accuracy on the first ``train_clean.images`` training images, unaugmented, in eval
    mode: the empirical risk on clean data, beside ``train_loss`` on what the optimiser saw."""
    subset = data.train[:cfg["train_clean"]["images"]]
    return {f"train_clean_{kind}{suffix}": value
            for suffix, (loss, acc) in scores(predictor(model, cfg), subset, data.mean, data.std).items()
            for kind, value in (("loss", loss), ("acc", acc))}


def trends(history):
    """Statistics over the epochs so far of ``test_acc``: its maximum (``test_acc_max``) and the
    median of the last 10 epochs (``test_acc_median10``, what He et al.'s Table 1 reports)."""
    if not history or "test_acc" not in history[-1]:
        return {}
    accs = [metrics["test_acc"] for metrics in history]
    return {"test_acc_max": max(accs), "test_acc_median10": float(np.median(accs[-10:]))}


# ---- corruptions: CIFAR-10-C-style data ---------------------------------------------------------

def corruption_errors(model, data, cfg):
    """Unnormalised corruption error (as Hendrycks' AugMix cifar.py): per corruption the error over
    its five severities (``uce_<corruption>``), and their mean (``uce``); on the first
    ``corruptions.images`` images of each severity (None: all)."""
    images, labels = corruptions.load(cfg["data"]["dataset"], cfg["data"]["root"])
    per_severity = len(labels) // len(corruptions.SEVERITIES)
    severities = corruptions.severity_slices(len(labels), min(cfg["corruptions"]["images"] or per_severity,
                                                              per_severity))
    device, predict = data.mean.device, predictor(model, cfg)
    metrics = {}
    for name in corruptions.CORRUPTIONS:
        errors = {}
        for rows in severities:
            x = torch.from_numpy(np.array(images[name][rows])).permute(0, 3, 1, 2)  # a copy: memmaps are read-only
            y = torch.from_numpy(np.asarray(labels[rows], dtype=np.int64))
            split = Split(x, y).to(device, cfg["speed"]["non_blocking"])
            for suffix, (_, acc) in scores(predict, split, data.mean, data.std,
                                           cfg["corruptions"]["batch_size"]).items():
                errors[suffix] = errors.get(suffix, 0.0) + (1 - acc) / len(severities)
        for suffix, error in errors.items():
            metrics[f"uce_{name}{suffix}"] = error
    for suffix, _ in heads(cfg):
        metrics[f"uce{suffix}"] = float(np.mean([metrics[f"uce_{c}{suffix}"] for c in corruptions.CORRUPTIONS]))
    return {m: metrics[m] for m in corruption_metrics(cfg)}


def corruption_metrics(cfg):
    return [f"uce{kind}{suffix}" for suffix, _ in heads(cfg)
            for kind in ("", *(f"_{c}" for c in corruptions.CORRUPTIONS))]


# ---- Fourier heatmap and low-pass accuracy -----------------------------------------------------

def fourier_heatmap(model, data, cfg):
    """Yin et al.'s Fourier heatmap on the first ``fourier.images`` test images: the error under a
    Fourier basis perturbation of L2 norm ``fourier.eps`` per frequency (array ``fourier<suffix>``)
    and its mean over frequencies (``fourier_err<suffix>``). Every lambda sees the same batches."""
    f, test = cfg["fourier"], data.test
    generator = torch.Generator(test.x.device).manual_seed(f["seed"])
    maps = fourier.heatmap(predictor(model, cfg), test.x[:f["images"]], test.y[:f["images"]],
                           data.mean, data.std, eps=f["eps"], batch_size=f["batch_size"], generator=generator)
    return {**{f"fourier{s}": m for s, m in maps.items()},
            **{f"fourier_err{s}": float(m.mean()) for s, m in maps.items()}}


def lowpass(model, data, cfg):
    """Accuracy on the first ``lowpass.images`` test images when every Fourier component outside a
    centred square of width B is removed, B = 1..image size (array ``lowpass_acc<suffix>``), and its
    mean over B (``lowpass_mean_acc<suffix>``)."""
    n, test = cfg["lowpass"]["images"], data.test
    curves = fourier.lowpass_accuracy(predictor(model, cfg), test.x[:n], test.y[:n], data.mean, data.std,
                                      widths=range(1, test.x.shape[-1] + 1))
    return {**{f"lowpass_acc{s}": c for s, c in curves.items()},
            **{f"lowpass_mean_acc{s}": float(np.mean(c)) for s, c in curves.items()}}


# ---- representation spectrum -------------------------------------------------------------------

def spectrum(model, data, cfg):
    """Singular values, largest first, of the covariance of the penultimate features (He et al.'s
    Fig. 3) of the first ``spectrum.images`` training images, unaugmented, in eval mode: of all of
    them (array ``spectrum_all``) and of those of class ``spectrum.class`` (``spectrum_class<C>``).
    A split-BatchNorm model is measured on its main branch, always in float32 (no ``speed.amp``)."""
    s = cfg["spectrum"]
    subset = data.train[:s["images"]]
    features = []
    with branch(model, "main") if split_bn(cfg) else nullcontext():
        for x, _ in batches(subset, 1000):
            features.append(penultimate_features(model, normalize(x, data.mean, data.std)).double())
    features = torch.cat(features)
    return {"spectrum_all": covariance_spectrum(features),
            f"spectrum_class{s['class']}": covariance_spectrum(features[subset.y == s["class"]])}


def covariance_spectrum(features):
    """Singular values of the (n - 1)-normalised covariance of rows ``features`` (n, d), as numpy."""
    centred = features - features.mean(0)
    covariance = centred.T @ centred / max(len(features) - 1, 1)
    return torch.linalg.svdvals(covariance).cpu().numpy()


EVALS = {
    "clean": Eval(clean, clean_metrics),
    "corruptions": Eval(corruption_errors, corruption_metrics),
    "fourier": Eval(fourier_heatmap, lambda cfg: [f"fourier_err{s}" for s, _ in heads(cfg)]),
    "lowpass": Eval(lowpass, lambda cfg: [f"lowpass_mean_acc{s}" for s, _ in heads(cfg)]),
    "train_clean": Eval(train_clean, lambda cfg: [f"train_clean_{kind}{s}" for s, _ in heads(cfg)
                                                  for kind in ("loss", "acc")]),
    "spectrum": Eval(spectrum, lambda cfg: []),  # arrays only
}


def run_evals(names, model, data, cfg):
    """The metrics of the evaluations ``names``, merged into one dict."""
    metrics = {}
    for name in names:
        metrics.update(EVALS[name].run(model, data, cfg))
    return metrics


def metric_names(names, cfg):
    return [metric for name in names for metric in EVALS[name].metrics(cfg)]


def at_best(name):
    """The name under which an end-of-training metric of the best model is reported."""
    return at_end(name, "best")


def at_end(name, model):
    """The name of an end-of-training metric of the ``best`` or ``last`` model (eval.at_end_models)."""
    return f"{name}_at_{model}"


def numbers_and_arrays(metrics):
    """Split evaluation results into numbers (reported) and arrays (kept with the checkpoint)."""
    arrays = {k: np.asarray(v) for k, v in metrics.items() if np.ndim(v) > 0}
    return {k: v for k, v in metrics.items() if k not in arrays}, arrays
