"""The sweep benchmark's trials (tests/bench/bench_sweep.py): a small CNN on digits, one trial per seed.

``epochs`` and ``train_size`` set a trial's length: the defaults make a trial of a few seconds on
one CPU; ``epochs=1, train_size=64`` a trial that does almost nothing (the driver's overhead).
"""
from ray import tune


def space(trials: int = 8, epochs: int = 3, train_size: int = 1200, cpus: int = 1):
    return {
        "param_space": {
            "data": {"dataset": "digits", "train_size": train_size, "val_size": 200, "test_size": 200},
            "model": {"name": "small_cnn"},
            "optim": {"lr": 0.05, "batch_size": 64, "epochs": epochs},
            "seed": tune.grid_search(list(range(trials))),
        },
        "resources": {"cpu": cpus},
    }
