"""Two identical trials in two phases (flip + crop with mixup, then no augmentation), the best epoch
picked by the lowest validation loss and the best model evaluated again at the end."""
PHASE_2 = {"pipeline": "none", "mix": None}


def space(epochs: int = 6, switch: int = 3):
    return {
        "param_space": {
            "data": {"dataset": "cifar10", "train_size": 1024, "val_size": 256, "test_size": 256},
            "model": {"name": "small_cnn"},
            "optim": {"lr": 0.05, "batch_size": 128, "epochs": epochs},
            "augment": {"pipeline": "standard", "mix": {"name": "mixup", "alpha": 1.0}},
            "phases": [{"start_epoch": switch, "augment": PHASE_2}],
            "eval": {"every_epoch": ["clean"], "at_end": ["clean"], "select": "val_loss", "mode": "min"},
        },
        "metric": "val_loss",
        "mode": "min",
        "num_samples": 2,
        "resources": {"cpu": 1},
    }
