"""The split-BN study's space (table 3: RandAugment alone and the full method) at a size for tests:
a small CNN, one epoch on 256 images, every evaluation on a few images."""
from search_spaces import splitbn


def space(root: str = ""):
    spec = splitbn.space(table=3, smoke=True, labels=("randaugment", "splitbn"))
    spec["param_space"].update({
        "data": {"dataset": "cifar10", "train_size": 256, "val_size": 128, "test_size": 128, "root": root},
        "model": {"name": "small_cnn"},
        "corruptions": {"images": 8},
        "fourier": {"images": 4, "batch_size": 2048},
        "lowpass": {"images": 32},
    })
    spec["param_space"]["optim"].update({"epochs": 1, "batch_size": 64})
    return spec
