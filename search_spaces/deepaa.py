"""Deep AutoAugment (DESIGN.md section 2, study 4; Zheng et al., ICLR 2022), searched by DeepAASearcher.

    searchlab sweep deepaa --arg smoke=True           # small CNN proxy, 2 layers of 8 steps, 2-epoch evaluations
    searchlab sweep deepaa                            # the paper's CIFAR-10 settings (needs GPUs: --arg gpus=1)
    searchlab sweep deepaa --arg layers=3 --arg steps=64 --arg proxy=resnet20   # a small real search

The sweep pretrains the proxy (WRN-40-2, 45 epochs on 5,000 images), searches the policy one layer
per trial (1,024 steps of 16 points each; ``steps=512`` is the paper's count), stops after
``layers`` layers or once identity takes ``identity_threshold`` of a layer, and trains with the
found policy cut to each depth of ``eval_layers`` (the paper's Table 5), beside the baselines:
DeepTA (as many uniform layers), TrivialAugment, RandAugment, no augmentation, and any policy file
(``baselines=("deepta", "/path/policy_DeepAA_cifar_1.npz")``). With ``deepta_steps`` a DeepTA
measurement runs beside each search: its cos(g_V, g_T) and reward spread per layer are the Fig. 4
baseline. ``batch_augment=8`` trains every evaluation with 8 augmented copies per image (Table 3).

The evaluation follows the authors' CIFAR code: WRN-28-10, 200 epochs, batch 128, SGD Nesterov lr
0.1 cosine with 5 warmup epochs, weight decay 5e-4, no crop, flip or cutout besides the policy (it
has those entries), geometric ops mirrored at random (``mirror``). It keeps 5,000 training images for
validation (theirs trains on all 50,000). Policies land in EXPERIMENT/deepaa/, figures and tables
in EXPERIMENT/figures/. Needs $SEARCHLAB_DATA/cifar10.
"""


def space(dataset: str = "cifar10", smoke: bool = False, layers: int = 6, steps: int = 1024, seeds: int = 1,
          proxy: str = "wrn40_2", pretrain_epochs: int = 45, model: str = "wrn28_10", epochs: int = 200,
          eval_layers: tuple = (), eval_seeds: int = 4, deepta_steps: int = 0, identity_threshold: float = 0.0,
          baselines: tuple = ("deepta", "trivialaugment", "none"), batch_augment: int = 1, mirror: bool = True,
          points: int = 16, val_images: int = 64, exp_gt_factor: int = 4, exp_g: int = 16, init: str = "identity",
          lr: float = 0.025, report_every: int = 16, train_size: int = 0, cpus: int = 1, gpus: float = 0):
    data = {"dataset": dataset, "val_size": 10000}
    if smoke:
        layers, steps, proxy, pretrain_epochs, model, epochs, eval_seeds = 2, 8, "small_cnn", 3, "small_cnn", 2, 1
        points, val_images, exp_gt_factor, exp_g, report_every, deepta_steps = 2, 16, 1, 2, 4, 4
        baselines, train_size = ("deepta", "none"), 3000
        data = {"dataset": dataset, "val_size": 2000, "train_size": 6000}
    elif train_size:
        data["train_size"] = train_size + 5000  # the proxy's 5,000 and the search's training pool
    search = {
        "data": data,
        "proxy": {"model": proxy, "epochs": pretrain_epochs, "pretrain_size": 1000 if smoke else 5000},
        "deepaa": {"steps": steps, "points": points, "val_images": val_images, "exp_gt_factor": exp_gt_factor,
                   "exp_g": exp_g, "init": init, "lr": lr, "report_every": report_every},
    }
    evaluate = {
        "data": {"dataset": dataset, "val_size": 5000, **({"train_size": train_size} if train_size else {})},
        "model": {"name": model},
        "optim": {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "batch_size": 128,
                  "epochs": epochs, "schedule": "cosine", "warmup_epochs": min(5, epochs // 10)},
    }
    resources = {"cpu": cpus, "gpu": gpus}
    return {
        "param_space": {},  # the searcher suggests every trial's config
        "trainable": "by_kind",
        "searcher": "deepaa",
        "searcher_options": {
            "search": search, "evaluate": evaluate, "layers": layers, "seeds": seeds,
            "identity_threshold": identity_threshold or None, "deepta_steps": deepta_steps,
            "eval_layers": list(eval_layers) or [layers], "eval_seeds": eval_seeds, "baselines": list(baselines),
            "mirror": mirror, "batch_augment": batch_augment,
        },
        "num_samples": -1,  # the searcher decides how many trials there are
        "resources": {"deepaa_pretrain": resources, "deepaa_layer": resources, "train": resources},
        "metric": "val_acc",
        "mode": "max",
        "figures": "deepaa",
    }
