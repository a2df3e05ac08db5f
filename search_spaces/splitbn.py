"""Split BatchNorm for weak and strong augmentations (DESIGN.md section 2, study 2), table by table.

    searchlab data corrupt cifar10                          # once: CIFAR-10-C-style data for uCE
    searchlab sweep splitbn --arg table=3 --arg smoke=True  # the ablations, ResNet-20 on 1k images, 1 seed: ~6 min on 2 CPUs (6m04s measured)
    searchlab sweep splitbn --arg table=1                   # main-branch augmentations, WRN-28-2, 200 epochs, 10 seeds
    searchlab sweep splitbn --arg table=4 --arg seeds=3

Every batch is used twice: a weak view through the main BatchNorm and a strong view (RandAugment
unless the table varies it) through an auxiliary one; the loss is their mean (regime ``splitbn``).
Each trial reports clean accuracy at every lambda in 0, 0.25, 0.5, 0.75, 1 (the weight on the aux
branch: 0 is the main branch) and, for its best epoch, the unnormalised corruption error uCE on
CIFAR-10-C-style data, Yin et al.'s Fourier heatmap and low-pass accuracy, all lambdas from the same
two forward passes. The figures (accuracy and uCE against lambda, heatmaps, low-pass curves) and one
table with mean and spread over seeds land in EXPERIMENT/figures/.

    table 1   the main branch's augmentation: none, flip, flip+crop, cutout, AugMix, Gaussian noise,
              RandAugment; RandAugment on the aux branch
    table 3   ablations: RandAugment alone (no split); two RandAugment views, one BatchNorm (the batch
              doubled); an aux BatchNorm with RandAugment on both branches; weak + strong views with
              one BatchNorm; the full method; the full method with shared affine parameters
    table 4   the aux branch's augmentation: Gaussian noise (sigma 0.2), AugMix, PGD (L-inf, 4 steps);
              each alone (only the strong view trains, evaluated on the aux branch: lambda 1) and with
              the weak main branch

Paper settings: WRN-28-2, 200 epochs, SGD lr 0.1 with cosine decay, batch 128, weight decay 5e-4,
10 seeds. Needs $SEARCHLAB_DATA/cifar10 and, for uCE, $SEARCHLAB_DATA/cifar10-c.
"""
from ray import tune

WEAK = "standard"       # flip + 4-pixel pad-and-crop
STRONG = "randaugment"  # flip + crop + RandAugment(2, 9)
GAUSSIAN = [{"op": "flip", "p": 0.5}, {"op": "pad_crop", "padding": 4}, {"op": "gaussian_noise", "sigma": 0.2}]


def split(main=WEAK, aux=STRONG, **splitbn):
    """A run of the full method with these views (and any other splitbn settings)."""
    return {"regime": "splitbn", "splitbn": {"main": main, "aux": aux, **splitbn}}


def aux_only(aux):
    """Only the strong view trains (its loss weight 1), and the aux branch is the trial's model."""
    return split(aux=aux, aux_loss_weight=1.0, **{"lambda": 1.0})


# table -> {label: the run's config}
TABLES = {
    1: {f"main={name}": split(main=main) for name, main in [
        ("none", "none"), ("flip", "flip"), ("flip+crop", WEAK), ("cutout", "cutout"),
        ("augmix", "augmix"), ("gaussian", GAUSSIAN), ("randaugment", STRONG)]},
    3: {
        "randaugment": {"augment": {"pipeline": STRONG}},
        "randaugment_x2": split(main=STRONG, split=False),
        "aux_bn_same_aug": split(main=STRONG),
        "weak+strong_no_split": split(split=False),
        "splitbn": split(),
        "splitbn_shared_affine": split(shared_affine=True),
    },
    4: {label: run for name, aux in [("gaussian", GAUSSIAN), ("augmix", "augmix"), ("pgd", "pgd")]
        for label, run in [(name, aux_only(aux)), (f"weak+{name}", split(aux=aux))]},
}

EVALS = {"every_epoch": ["clean"], "at_end": ["corruptions", "fourier", "lowpass"]}
DATA = {"dataset": "cifar10", "val_size": 5000}
# Smoke size: fewer images to train on and to evaluate (uCE on 100 images per severity).
SMOKE_DATA = {**DATA, "train_size": 1000, "val_size": 500, "test_size": 500}
SMOKE_EVALS = {"corruptions": {"images": 100}, "fourier": {"images": 20}, "lowpass": {"images": 100}}


def space(table: int = 3, smoke: bool = False, seeds: int = 10, model: str = "wrn28_2", epochs: int = 200,
          labels: tuple = (), gpu: float = 0):
    if table not in TABLES:
        raise ValueError(f"unknown table {table}; valid: {', '.join(map(str, TABLES))}")
    runs = TABLES[table]
    unknown = set(labels) - set(runs)
    if unknown:
        raise ValueError(f"unknown label(s) {', '.join(sorted(unknown))} for table {table}; valid: {', '.join(runs)}")
    if smoke:
        seeds, model, epochs = 1, "resnet20", 2
    return {
        "param_space": {
            "data": SMOKE_DATA if smoke else DATA,
            "model": {"name": model},
            "optim": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 128,
                      "epochs": epochs, "schedule": "cosine"},
            "eval": EVALS,
            **(SMOKE_EVALS if smoke else {}),
            "variant": tune.grid_search([{"label": label, **run} for label, run in runs.items()
                                         if not labels or label in labels]),
            "seed": tune.grid_search(list(range(seeds))),
        },
        "metric": "val_acc",
        "mode": "max",
        "resources": {"cpu": 1, "gpu": gpu},
        "figures": "splitbn",
    }
