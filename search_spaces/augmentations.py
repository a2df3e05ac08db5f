"""Trials that differ only in their training augmentation (CIFAR-10, ResNet-20 by default).

    searchlab sweep augmentations --arg smoke=True       # 7 trials, 2 epochs on 2k images: ~3 min on 2 CPUs (2m43s measured)
    searchlab sweep augmentations --arg "names=['none', 'cutmix']" --arg model=wrn28_2

Full runs use the CKA study's CIFAR settings: SGD lr 0.1, momentum 0.9, weight decay 1e-4, cosine,
200 epochs. Needs $SEARCHLAB_DATA/cifar10.
"""
from ray import tune

# name -> the trial's "augment" group (presets: searchlab/augment/__init__.py PRESETS)
AUGMENTATIONS = {
    "none": {"pipeline": "none"},
    "flip_crop": {"pipeline": "standard"},
    "cutout": {"pipeline": "cutout"},
    "mixup": {"pipeline": "standard", "mix": {"name": "mixup", "alpha": 1.0}},
    "cutmix": {"pipeline": "standard", "mix": {"name": "cutmix", "alpha": 1.0, "p": 0.5}},
    "autoaugment": {"pipeline": "autoaugment"},
    "randaugment": {"pipeline": "randaugment"},
}


def space(smoke: bool = False, names=tuple(AUGMENTATIONS), model: str = "resnet20", seed: int = 0):
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; valid: {', '.join(AUGMENTATIONS)}")
    return {
        "param_space": {
            "data": {"dataset": "cifar10",
                     **({"train_size": 2000, "val_size": 500, "test_size": 1000} if smoke else {})},
            "model": {"name": model},
            "optim": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 128,
                      "epochs": 2 if smoke else 200, "schedule": "cosine"},
            "augment": tune.grid_search([AUGMENTATIONS[n] for n in names]),
            "seed": seed,
        },
        "metric": "val_acc",
        "mode": "max",
        "resources": {"cpu": 1},
    }
