"""Refinement at a size for tests: a small CNN with mixup for a fixed budget of 6 epochs, switching
to flip + crop alone after 3 epochs at learning rate 0.003, or never (a switch at the end)."""
from ray import tune


def space(switches=(3, 6)):
    return {
        "param_space": {
            "data": {"dataset": "cifar10", "train_size": 1024, "val_size": 256, "test_size": 256},
            "model": {"name": "small_cnn"},
            "optim": {"lr": 0.05, "batch_size": 128, "epochs": 6, "schedule": "step", "milestones": [2]},
            "augment": {"pipeline": "standard", "mix": {"name": "mixup", "alpha": 1.0}},
            "refine": {"start_epoch": tune.grid_search(list(switches)), "lr": 0.003},
            "eval": {"every_epoch": ["clean", "train_clean"], "at_end": ["spectrum"],
                     "at_end_models": ["best", "last"]},
            "train_clean": {"images": 256},
            "spectrum": {"images": 256},
        },
        "resources": {"cpu": 1},
        "figures": "refine",
    }
