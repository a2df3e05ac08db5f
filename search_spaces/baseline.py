"""CIFAR-10 ResNet baselines with the settings of He et al. (2016), section 4.2.

    searchlab sweep baseline                                  # ResNet-20..110, 182 epochs each
    searchlab sweep baseline --arg smoke=True                 # ResNet-20, 5 epochs, 5k images: ~2 min on 2 CPUs (2m14s measured)
    searchlab sweep baseline --arg "depths=[20, 56]" --arg seeds=3

Paper settings: SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 128, 64k iterations (~182 epochs
at 45k/5k train/val), lr divided by 10 at 32k and 48k iterations, flip + 4-pixel pad-and-crop.
Published test error: ResNet-20 8.75%, 32 7.51%, 44 7.17%, 56 6.97%, 110 6.43%.
Needs $SEARCHLAB_DATA/cifar10.
"""
from ray import tune


def space(smoke: bool = False, depths=(20, 32, 44, 56, 110), seeds: int = 1, gpu: float = 0):
    models = ["resnet20"] if smoke else [f"resnet{d}" for d in depths]
    return {
        "param_space": {
            "data": {"dataset": "cifar10", "val_size": 5000,
                     **({"train_size": 5000, "val_size": 1000, "test_size": 2000} if smoke else {})},
            "model": {"name": tune.grid_search(models)},
            "optim": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 128,
                      "epochs": 5 if smoke else 182, "schedule": "step",
                      "milestones": [91, 136] if not smoke else [0.5, 0.75], "gamma": 0.1},
            "augment": {"pipeline": [{"op": "flip", "p": 0.5}, {"op": "pad_crop", "padding": 4}]},
            "seed": tune.grid_search(list(range(seeds))),
        },
        "metric": "val_acc",
        "mode": "max",
        "resources": {"cpu": 2 if smoke else 1, "gpu": gpu},
    }
