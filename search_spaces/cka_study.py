"""Which layers do augmentations change? The CKA study (DESIGN.md section 2, study 1).

    searchlab sweep cka_study --arg smoke=True    # ResNet-20, 12 runs x 2 epochs on 1k images + CKA: ~4 min on 2 CPUs (3m35s measured)
    searchlab sweep cka_study                     # ResNet-32 and ResNet-56, 12 runs each, 200 epochs
    searchlab sweep cka_study --arg "weights={'resnet18': '/path/r18.pth', 'resnet50': '/path/r50.pth'}"

Per architecture, 12 runs: two without augmentation (none1, none2: different seeds) and one per
augmentation. From scratch: SGD lr 0.1, momentum 0.9, weight decay 1e-4, 200 epochs, the
best-validation epoch kept. Fine-tuned (when ImageNet weights are supplied): lr 1e-3 (the paper
fine-tunes on Tiny-ImageNet; here on the chosen dataset). As the runs finish, Ray actors compare every
conv layer of each run with the references by linear CKA on 2,048 validation images; the heatmaps,
impact-vs-depth plots and the accuracy/impact table land in EXPERIMENT/cka/
(`searchlab cka EXPERIMENT` redoes them).
"""
from ray import tune

# label -> the run's "augment" group
RUNS = {
    "none1": {"pipeline": "none"},
    "none2": {"pipeline": "none"},
    "flip": {"pipeline": "flip"},
    "crop": {"pipeline": "crop"},
    "flip_crop": {"pipeline": "standard"},
    "brightness": {"pipeline": "brightness"},
    "hue": {"pipeline": "hue"},
    "solarize": {"pipeline": "solarize"},
    "cutout": {"pipeline": [{"op": "cutout", "size": 16}]},
    "mixup": {"pipeline": "none", "mix": {"name": "mixup", "alpha": 1.0}},
    "cutmix": {"pipeline": "none", "mix": {"name": "cutmix", "alpha": 1.0, "p": 0.5}},
    "autoaugment": {"pipeline": [{"op": "autoaugment", "policy": "cifar10"}]},
}


def space(smoke: bool = False, models=("resnet32", "resnet56"), weights=None, labels=tuple(RUNS),
          dataset: str = "cifar10", epochs: int = 200):
    if weights:  # fine-tuning pretrained ImageNet networks
        models, lr = tuple(weights), 1e-3
    else:
        lr = 0.1
    if smoke:
        models, epochs = ("resnet20",), 2
    runs = [{"model": {"name": model, "weights": (weights or {}).get(model)},
             "augment": RUNS[label],
             "seed": seed,
             "cka": {"label": label, "group": model, **({"images": 512} if smoke else {})}}
            for model in models for seed, label in enumerate(labels)]
    return {
        "param_space": {
            "data": {"dataset": dataset, "val_size": 5000,
                     **({"train_size": 1000, "val_size": 512, "test_size": 1000} if smoke else {})},
            "optim": {"lr": lr, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 128,
                      "epochs": epochs, "schedule": "cosine"},
            "variant": tune.grid_search(runs),
        },
        "metric": "val_acc",
        "mode": "max",
        "resources": {"cpu": 1},
        "cka": {"cpu": 1, "actors": 1},
    }
