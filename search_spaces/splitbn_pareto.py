"""Accuracy against corruption robustness: a multi-objective search over the aux augmentation's
strength and lambda (split BatchNorm, DESIGN.md section 2, study 2).

    searchlab data corrupt cifar10                        # once: CIFAR-10-C-style data for uCE
    searchlab sweep splitbn_pareto --arg smoke=True       # 6 trials, ResNet-20 on 1k images: ~4 min on 2 CPUs (3m54s measured)
    searchlab sweep splitbn_pareto --arg trials=60        # WRN-28-2, 200 epochs
    searchlab sweep splitbn_pareto --arg sampler=tpe      # Optuna's multi-objective TPE instead of NSGA-II

Merchant et al. sweep lambda by hand for one strong augmentation. Here Optuna searches the
RandAugment strength of the aux view (ops per image ``n``, magnitude bin ``m`` of 31) and the
trial's lambda together, maximising the best validation accuracy and minimising the unnormalised
corruption error (uCE) at that lambda. The result is the Pareto front: EXPERIMENT/figures/pareto.png
and pareto.csv (every trial still reports every lambda of 0, 0.25, ..., 1, see the table there).
"""
from functools import partial

from search_spaces.splitbn import DATA, SMOKE_DATA, SMOKE_EVALS
from searchlab.spaces import flatten

OBJECTIVES = {"best_val_acc": "max", "uce_at_best": "min"}


def define(trial, model, epochs, smoke):
    # Op parameters inside a pipeline list have no config key of their own: the raw suggestions
    # live in the "search" group and are put into the aux pipeline below.
    n = trial.suggest_int("search/aux_n", 1, 3)
    m = trial.suggest_int("search/aux_m", 0, 30)
    trial.suggest_float("splitbn/lambda", 0.0, 1.0)
    return flatten({
        "data": SMOKE_DATA if smoke else DATA,
        "model": {"name": model},
        "optim": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 128,
                  "epochs": epochs, "schedule": "cosine"},
        "regime": "splitbn",
        "splitbn": {"main": "standard", "aux": [{"op": "flip", "p": 0.5}, {"op": "pad_crop", "padding": 4},
                                                {"op": "randaugment", "n": n, "m": m}]},
        "eval": {"every_epoch": ["clean"], "at_end": ["corruptions", "lowpass"]},
        **(SMOKE_EVALS if smoke else {}),
    })


def space(smoke: bool = False, trials: int = 60, sampler: str = "nsga2", model: str = "wrn28_2",
          epochs: int = 200):
    if smoke:
        trials, model, epochs = 6, "resnet20", 2
    return {
        "param_space": partial(define, model=model, epochs=epochs, smoke=smoke),
        "searcher": "optuna",
        "searcher_options": {"sampler": sampler},
        "num_samples": trials,
        "metric": list(OBJECTIVES),
        "mode": list(OBJECTIVES.values()),
        "resources": {"cpu": 1},
        "max_concurrent_trials": 2,
        "figures": "splitbn",
    }
