"""Quick start: a small CNN on scikit-learn's 8x8 digits, learning rate x augmentation (4 trials).

    searchlab sweep quickstart

Needs no download. About 35 seconds on 2 CPU cores (12 epochs per trial, 1.3k training images).
"""
from ray import tune


def space(epochs: int = 12):
    return {
        "param_space": {
            "data": {"dataset": "digits"},
            "model": {"name": "small_cnn"},
            "optim": {"lr": tune.grid_search([0.02, 0.1]), "batch_size": 64, "epochs": epochs,
                      "weight_decay": 5e-4, "schedule": "cosine"},
            # Digits must not be flipped; a 1-pixel shift is the natural augmentation here.
            "augment": {"pipeline": tune.grid_search([[], [{"op": "pad_crop", "padding": 1}]])},
        },
        "metric": "val_acc",
        "mode": "max",
        "resources": {"cpu": 1},
    }
