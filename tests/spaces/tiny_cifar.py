"""A sweep small enough for the test suite: CIFAR-10 subsets, a few epochs, two seeds."""
from ray import tune


def space(model: str = "resnet20", epochs: int = 2, seeds: int = 2, train_size: int = 512,
          searcher: str = "grid"):
    return {
        "param_space": {
            "data": {"dataset": "cifar10", "train_size": train_size, "val_size": 256, "test_size": 256},
            "model": {"name": model},
            "optim": {"lr": 0.05, "batch_size": 64, "epochs": epochs, "schedule": "cosine"},
            "augment": {"pipeline": [{"op": "flip", "p": 0.5}, {"op": "pad_crop", "padding": 4}]},
            "seed": tune.grid_search(list(range(seeds))),
        },
        "searcher": searcher,
        "resources": {"cpu": 1},
    }
