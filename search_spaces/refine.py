"""Refinement (DESIGN.md section 2, study 3; He et al. 2019, "Data augmentation revisited").

    searchlab sweep refine --arg smoke=True                  # ResNet-20 on 1k images, 3 + 2 epochs: ~2 min on 2 CPUs (2m11s measured)
    searchlab sweep refine                                   # Table 1: PreAct-18 on CIFAR-10, T1 = 400, T2 = 50, 3 seeds
    searchlab sweep refine --arg model=wrn28_10 --arg dataset=cifar100
    searchlab sweep refine --arg figure=4                    # Fig. 4: mixup, 400 epochs in all, the switch epoch varied

Training runs T1 epochs with an intensive augmentation on top of flip + crop (mixup, manifold
mixup, cutmix, or AutoAugment followed by cutout), then T2 refinement epochs with flip + crop only at
a small learning rate (config group ``refine``). Each augmentation runs without and with refinement;
"without" trains the T1 epochs only. Every epoch reports the loss and accuracy on 5,000 clean
training images (``train_clean_*``), the loss on the augmented batches (``train_loss``), the test
accuracy with its maximum and the median of the last 10 epochs (``test_acc_max``,
``test_acc_median10``, the statistic of the paper's Table 1). At the end the singular values of the
penultimate features' covariance are kept for the best and the last model (``spectrum_*``). The
figures (Fig. 1 loss curves, Fig. 3 spectra, Fig. 4 error against switch epoch) and a table of best,
last and median-of-10 accuracy with mean and spread over seeds land in EXPERIMENT/figures/.

Paper settings, per model:
    preactresnet18  SGD lr 0.1, momentum 0.9, batch 128, divided by 10 at epochs 150 and 275;
                    refinement at the last stage's rate (0.001: refine.lr "final")
    wrn28_10        divided by 5 at 120, 240 and 320; with AutoAugment, dropout 0.3 and cosine
                    decay, then refinement at an explicit 0.001
Weight decay (5e-4) and the mixes' parameters (mixup alpha 1, manifold mixup alpha 2 at the input or
after stage 1 or 2, cutmix alpha 1 with probability 0.5) are the usual CIFAR settings of the
methods' own papers; He et al. do not list them. Needs $SEARCHLAB_DATA/<dataset>.
"""
from ray import tune

# label -> the intensive augmentation of the first T1 epochs
INTENSIVE = {
    "mixup": {"pipeline": "standard", "mix": {"name": "mixup", "alpha": 1.0}},
    "manifold_mixup": {"pipeline": "standard", "mix": {"name": "manifold_mixup", "alpha": 2.0, "layers": [0, 1, 2]}},
    "cutmix": {"pipeline": "standard", "mix": {"name": "cutmix", "alpha": 1.0, "p": 0.5}},
    "autoaugment": {"pipeline": "autoaugment_cutout", "mix": None},
}
# model -> its optimiser settings; milestones as fractions of T1, so that they scale to short runs
OPTIM = {
    "preactresnet18": {"schedule": "step", "milestones": [150 / 400, 275 / 400], "gamma": 0.1},
    "wrn28_10": {"schedule": "step", "milestones": [120 / 400, 240 / 400, 320 / 400], "gamma": 0.2},
}


def run(augmentation, model, epochs, refine_epochs=0, start_epoch=None):
    """The config of one run: the augmentation and the model's schedule for ``epochs``, with
    ``refine_epochs`` appended or a switch at ``start_epoch`` (None: no refinement)."""
    optim = {**OPTIM.get(model, OPTIM["preactresnet18"]), "epochs": epochs}
    refine = {"epochs": refine_epochs, "start_epoch": start_epoch, "lr": "final"}
    config = {"augment": INTENSIVE[augmentation], "optim": optim, "refine": refine, "model": {"name": model}}
    if model == "wrn28_10" and augmentation == "autoaugment":  # AutoAugment's own WRN setting
        config["model"]["dropout"] = 0.3
        config["optim"] = {"schedule": "cosine", "epochs": epochs}
        config["refine"]["lr"] = 0.001
    return config


def space(dataset: str = "cifar10", model: str = "preactresnet18", figure: int = 1, smoke: bool = False,
          seeds: int = 3, epochs: int = 400, refine_epochs: int = 50, switches=(100, 200, 300, 350, 375, 400),
          gpu: float = 0):
    if figure not in (1, 4):
        raise ValueError(f"unknown figure {figure}; valid: 1 (the Table 1 grid), 4 (switch epochs)")
    if smoke:
        model, seeds, epochs, refine_epochs, switches = "resnet20", 1, 3, 2, (2, 5)
        if figure == 4:
            epochs = 5
    if figure == 1:
        runs = {label: run(augmentation, model, epochs, refine)
                for augmentation in INTENSIVE
                for label, refine in [(augmentation, 0), (f"{augmentation}+refine", refine_epochs)]}
    else:  # a fixed budget of `epochs`; switching at the last epoch is no refinement
        runs = {f"switch={s}": run("mixup", model, epochs, start_epoch=s) for s in switches}
    size = {"train_size": 1000, "val_size": 500, "test_size": 500} if smoke else {"val_size": 5000}
    evals = {"images": 500 if smoke else 5000}
    return {
        "param_space": {
            "data": {"dataset": dataset, **size},
            "optim": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 128},
            "eval": {"every_epoch": ["clean", "train_clean"], "at_end": ["spectrum"],
                     "at_end_models": ["best", "last"]},
            "train_clean": evals,
            "spectrum": evals,
            "variant": tune.grid_search([{"label": label, **config} for label, config in runs.items()]),
            "seed": tune.grid_search(list(range(seeds))),
        },
        "metric": "val_acc",
        "mode": "max",
        "resources": {"cpu": 1, "gpu": gpu},
        "figures": "refine",
    }
