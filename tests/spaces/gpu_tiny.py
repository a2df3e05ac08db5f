"""Trials that ask for (declared) GPUs: small CNN on digits, ``trials`` seeds of ``epochs`` epochs."""
from ray import tune


def space(trials: int = 4, gpu: float = 1.0, epochs: int = 3):
    return {
        "param_space": {
            "data": {"dataset": "digits"},
            "model": {"name": "small_cnn"},
            "optim": {"lr": 0.05, "batch_size": 64, "epochs": epochs},
            "seed": tune.grid_search(list(range(trials))),
        },
        "resources": {"cpu": 1, "gpu": gpu},
    }
