"""Search the refinement switch epoch and learning rate under a fixed budget (He et al.'s Fig. 4 as
a search rather than a grid): Optuna's TPE proposes, ASHA stops weak trials early.

    searchlab sweep refine_switch --arg smoke=True     # ResNet-20 on 1k images, 6 epochs, 6 trials: ~2.5 min on 2 CPUs (2m28s measured)
    searchlab sweep refine_switch                      # PreAct-18 with mixup, 400 epochs in all, 24 trials

Each trial trains ``budget`` epochs with mixup on top of flip + crop and switches to flip + crop
alone at ``refine/start_epoch`` (the last epoch: no refinement), at the learning rate
``refine/lr``; the searcher sees validation accuracy, never the test split. ASHA's rungs start at
``grace`` epochs: a trial that switches late is judged at a rung before its switch by a model still
training with mixup, so keep ``grace`` at or after the earliest switch the space allows, or expect
late switchers to be stopped for what they have not done yet.
"""
from functools import partial

from search_spaces.refine import INTENSIVE, OPTIM
from searchlab.spaces import flatten


def define(trial, model, budget, earliest, dataset, size):
    trial.suggest_int("refine/start_epoch", earliest, budget)
    trial.suggest_float("refine/lr", 1e-4, 1e-2, log=True)
    return flatten({
        "augment": INTENSIVE["mixup"],
        "model": {"name": model},
        "data": {"dataset": dataset, **size},
        "optim": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 128,
                  **OPTIM.get(model, OPTIM["preactresnet18"]), "epochs": budget},
        "eval": {"every_epoch": ["clean", "train_clean"]},
    })


def space(dataset: str = "cifar10", model: str = "preactresnet18", budget: int = 400, earliest: int = 200,
          trials: int = 24, grace: int = 250, smoke: bool = False, gpu: float = 0):
    size = {"val_size": 5000}
    if smoke:
        model, budget, earliest, trials, grace = "resnet20", 6, 2, 6, 3
        size = {"train_size": 1000, "val_size": 500, "test_size": 500}
    return {
        "param_space": partial(define, model=model, budget=budget, earliest=earliest, dataset=dataset, size=size),
        "searcher": "optuna",
        "scheduler": "asha",
        "scheduler_options": {"grace_period": grace},
        "num_samples": trials,
        "metric": "val_acc",
        "mode": "max",
        "resources": {"cpu": 1, "gpu": gpu},
        "max_concurrent_trials": 2,
        "figures": "refine",
    }
