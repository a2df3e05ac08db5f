"""Optuna (TPE) search over learning rate and weight decay, with ASHA stopping weak trials early.

    searchlab sweep optuna_lr_wd                          # small CNN on digits, 12 trials: ~30 s on 2 CPUs
    searchlab sweep optuna_lr_wd --arg dataset=cifar10 --arg model=resnet20 --arg epochs=30

The space is define-by-run: Optuna sees each suggestion as it is made. Parameter names are the
trial config's keys joined by "/", which Tune turns back into the nested config.
"""
from functools import partial

from searchlab.spaces import flatten


def define(trial, dataset, model, epochs):
    trial.suggest_float("optim/lr", 1e-3, 0.5, log=True)
    trial.suggest_float("optim/weight_decay", 1e-6, 1e-2, log=True)
    return flatten({
        "data": {"dataset": dataset},
        "model": {"name": model},
        "optim": {"epochs": epochs, "batch_size": 64 if dataset == "digits" else 128},
        "augment": {"pipeline": [] if dataset == "digits" else
                    [{"op": "flip", "p": 0.5}, {"op": "pad_crop", "padding": 4}]},
    })


def space(dataset: str = "digits", model: str = "small_cnn", epochs: int = 8, trials: int = 12):
    return {
        "param_space": partial(define, dataset=dataset, model=model, epochs=epochs),
        "searcher": "optuna",
        "scheduler": "asha",
        "num_samples": trials,
        "metric": "val_acc",
        "mode": "max",
        "resources": {"cpu": 1},
        "max_concurrent_trials": 2,
    }
