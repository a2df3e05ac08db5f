"""A CKA study small enough for the test suite: small CNN on digits, three runs."""
from ray import tune


def space(ref_epochs: int = 3):
    # The augmented run is listed first and is shortest, so it finishes before the references.
    runs = [{"augment": {"pipeline": pipeline}, "seed": seed, "optim": {"epochs": epochs},
             "cka": {"label": label, "group": "small_cnn", "images": 128, "batch_size": 64}}
            for label, pipeline, seed, epochs in [("crop", [{"op": "pad_crop", "padding": 1}], 2, 1),
                                                  ("none1", "none", 0, ref_epochs),
                                                  ("none2", "none", 1, ref_epochs)]]
    return {
        "param_space": {
            "data": {"dataset": "digits"},
            "model": {"name": "small_cnn"},
            "optim": {"lr": 0.05, "batch_size": 64},
            "variant": tune.grid_search(runs),
        },
        "resources": {"cpu": 1},
        "cka": {"cpu": 1},
    }
