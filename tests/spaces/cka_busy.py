"""A CKA study that keeps the cluster full: two short references first, then ``augmented`` longer
runs, more than there are slots, so trials are always waiting when the references finish."""
from ray import tune


def space(augmented: int = 4, epochs: int = 6):
    def run(label, seed, pipeline, epochs):
        return {"augment": {"pipeline": pipeline}, "seed": seed, "optim": {"epochs": epochs},
                "cka": {"label": label, "group": "small_cnn", "images": 128, "batch_size": 64}}

    runs = [run("none1", 0, "none", 1), run("none2", 1, "none", 1)]
    runs += [run(f"crop{i}", 2 + i, [{"op": "pad_crop", "padding": 1}], epochs) for i in range(augmented)]
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
