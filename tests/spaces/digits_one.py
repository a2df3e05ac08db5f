"""One small CNN on digits, a few epochs: a single trial for the fault-tolerance tests."""


def space(epochs: int = 8, max_failures: int = 2):
    return {
        "param_space": {
            "data": {"dataset": "digits"},
            "model": {"name": "small_cnn"},
            "optim": {"lr": 0.05, "batch_size": 64, "epochs": epochs},
        },
        "resources": {"cpu": 1},
        "max_failures": max_failures,  # retries of the trial, from its checkpoint, when its worker dies
    }
