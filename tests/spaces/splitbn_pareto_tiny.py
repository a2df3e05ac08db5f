"""The split-BN Pareto space at a size for tests: three trials of a small CNN, two epochs on 256
images (uCE, an objective, comes with the last only), uCE on 8 images per severity."""
from functools import partial

from search_spaces import splitbn_pareto


def define(trial, root):
    config = splitbn_pareto.define(trial, model="small_cnn", epochs=2, smoke=True)
    return {**config, "data/train_size": 256, "data/val_size": 128, "data/test_size": 128, "data/root": root,
            "optim/batch_size": 64, "corruptions/images": 8, "lowpass/images": 32}


def space(root: str = ""):
    return {**splitbn_pareto.space(smoke=True), "param_space": partial(define, root=root), "num_samples": 3}
