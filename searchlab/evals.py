"""Evaluations: what a trial measures on its model. No Ray.

``EVALS`` maps a name to an ``Eval``: ``run(model, data, cfg)`` returns a dict of named metrics and
``metrics(cfg)`` lists those names without running anything, so that a sweep can check its metric
before it starts. An evaluation reads its parameters from its own config group, if it has one.

The ``eval`` group of a trial config says which evaluations run after every epoch
(``every_epoch``), which run once at the end on the best model (``at_end``, reported with the suffix
``_at_best``), and which every-epoch metric picks the best epoch (``select``, ``mode``).
"""
from typing import Callable, NamedTuple

from searchlab.train import evaluate


class Eval(NamedTuple):
    run: Callable       # (model, data, cfg) -> {metric: value}
    metrics: Callable   # (cfg) -> the names run() returns


def clean(model, data, cfg):
    """Loss and accuracy on the validation and test splits, unaugmented."""
    val_loss, val_acc = evaluate(model, data.val, data.mean, data.std)
    test_loss, test_acc = evaluate(model, data.test, data.mean, data.std)
    return {"val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc}


EVALS = {
    "clean": Eval(clean, lambda cfg: ("val_loss", "val_acc", "test_loss", "test_acc")),
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
    return f"{name}_at_best"
