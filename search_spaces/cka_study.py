"""Which layers do augmentations change? The CKA study (DESIGN.md section 2, study 1).

    searchlab sweep cka_study --arg smoke=True    # ResNet-20, 12 runs x 2 epochs on 1k images + CKA: ~4 min on 2 CPUs (3m35s measured)
    searchlab sweep cka_study                     # ResNet-32 and ResNet-56, 12 runs each, 200 epochs
    searchlab sweep cka_study --arg seeds=3       # 3 runs per augmentation and 3 references: mean ± std
    searchlab sweep cka_study --arg "weights={'resnet18': '/path/r18.pth', 'resnet50': '/path/r50.pth'}"

Per architecture, with ``seeds`` = k (default 1): R = max(2, k) runs without augmentation (the
references none1..noneR) and k runs per augmentation, labelled by the augmentation when k = 1 (flip,
crop, ...: the paper's 12 runs) and flip1..flipk otherwise (``cka.augmentation`` = flip groups them).
Every run has its own seed. From scratch: SGD lr 0.1, momentum 0.9, weight decay 1e-4, 200 epochs,
the best-validation epoch kept. Fine-tuned (when ImageNet weights are supplied): lr 1e-3 (the paper
fine-tunes on Tiny-ImageNet; here on the chosen dataset). As the runs finish, Ray actors compare every
conv layer of each run with every reference by linear CKA on 2,048 validation images; the heatmaps,
impact-vs-depth plots (mean ± std over the k runs) and the accuracy/impact table land in
EXPERIMENT/cka/ (`searchlab cka EXPERIMENT` redoes them; searchlab/analysis/study.py says what each
number is).

Cost per architecture, with A = 10 augmentations: R + k*A training runs and R(R-1)/2 + R*k*A CKA
comparisons. k = 1: 12 runs, 21 comparisons; k = 3: 33 runs, 93 comparisons; k = 5: 55 runs,
260 comparisons. A comparison costs about one pass of both models over the CKA images.
"""
from ray import tune

from searchlab.errors import UserError

# augmentation -> the run's "augment" group; "none" is the references'
RUNS = {
    "none": {"pipeline": "none"},
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
AUGMENTATIONS = tuple(name for name in RUNS if name != "none")


def study_runs(augmentations=AUGMENTATIONS, seeds: int = 1):
    """[(label, augmentation)]: the references none1..noneR, then each augmentation's runs."""
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise UserError(f"seeds must be a whole number >= 1, got {seeds!r}")
    if isinstance(augmentations, str):  # --arg augmentations=flip
        augmentations = (augmentations,)
    for name in augmentations:
        if name not in AUGMENTATIONS:
            raise UserError(f"unknown augmentation {name!r}; valid: {', '.join(AUGMENTATIONS)}")
    runs = [(f"none{i}", "none") for i in range(1, max(2, seeds) + 1)]
    for name in augmentations:
        runs += [(name, name)] if seeds == 1 else [(f"{name}{i}", name) for i in range(1, seeds + 1)]
    return runs


def space(smoke: bool = False, models=("resnet32", "resnet56"), weights=None, augmentations=AUGMENTATIONS,
          seeds: int = 1, dataset: str = "cifar10", epochs: int = 200):
    if weights:  # fine-tuning pretrained ImageNet networks
        models, lr = tuple(weights), 1e-3
    else:
        lr = 0.1
    if smoke:
        models, epochs = ("resnet20",), 2
    labelled = study_runs(augmentations, seeds)
    references = [label for label, name in labelled if name == "none"]
    runs = [{"model": {"name": model, "weights": (weights or {}).get(model)},
             "augment": RUNS[name],
             "seed": seed,
             "cka": {"label": label, "augmentation": name, "group": model, "references": references,
                     **({"images": 512} if smoke else {})}}
            for model in models for seed, (label, name) in enumerate(labelled)]
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
