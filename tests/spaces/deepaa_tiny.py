"""DeepAA at a size for tests: the smoke search (small CNN proxy on a CIFAR-10 subset, 2 points per
step) with ``steps`` steps per layer reported every ``report_every``, DeepTA measurements of 2 steps,
and 1-epoch evaluations of the found policy and of no augmentation."""
from search_spaces.deepaa import space as deepaa_space


def space(steps=4, report_every=2, layers=2):
    spec = deepaa_space(smoke=True)
    options = spec["searcher_options"]
    options["search"]["deepaa"].update(steps=steps, report_every=report_every)
    options["evaluate"]["data"]["train_size"] = 1000
    options["evaluate"]["optim"]["epochs"] = 1
    options.update(layers=layers, eval_layers=[layers], deepta_steps=2, baselines=["none"])
    return spec
