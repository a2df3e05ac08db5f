import pytest

from searchlab import spaces
from searchlab.config import DEFAULTS, resolve
from searchlab.errors import UserError


def write_space(tmp_path, body, name="myspace"):
    path = tmp_path / f"{name}.py"
    path.write_text("from ray import tune\n" + body)
    return str(path)


def test_resolve_merges_over_defaults_and_rejects_unknown_keys():
    cfg = resolve({"optim": {"lr": 0.3}, "seed": 4})
    assert cfg["optim"]["lr"] == 0.3 and cfg["optim"]["momentum"] == DEFAULTS["optim"]["momentum"]
    assert cfg["seed"] == 4 and DEFAULTS["seed"] == 0
    with pytest.raises(UserError, match=r"unknown key\(s\) lrr in optim; valid: lr, momentum"):
        resolve({"optim": {"lrr": 0.1}})
    with pytest.raises(UserError, match=r"unknown key\(s\) optimizer in config; valid: data, model"):
        resolve({"optimizer": {}})
    with pytest.raises(UserError, match=r"unknown model.name 'resnet21'; valid: resnet20, resnet32"):
        resolve({"model": {"name": "resnet21"}})
    with pytest.raises(UserError, match=r"unknown optim.schedule 'poly'; valid: cosine, step, constant"):
        resolve({"optim": {"schedule": "poly"}})


def test_bundled_spaces_load_and_are_valid():
    assert {"quickstart", "baseline", "optuna_lr_wd"} <= set(spaces.available())
    for name in spaces.available():
        spec = spaces.load(name)
        assert spec["metric"] == ("val_acc" if name != "splitbn_pareto" else ["best_val_acc", "uce_at_best"])
    smoke = spaces.load("baseline", {"smoke": True})["param_space"]
    assert smoke["data"]["train_size"] == 5000 and smoke["model"]["name"] == {"grid_search": ["resnet20"]}


def test_every_grid_option_is_checked(tmp_path):
    path = write_space(tmp_path, (
        "def space():\n"
        "    return {'param_space': {'model': {'name': tune.grid_search(['resnet20', 'vgg'])}}}\n"))
    with pytest.raises(UserError, match=r"unknown model.name 'vgg'"):
        spaces.load(path)
    path = write_space(tmp_path, (
        "def space():\n"
        "    return {'param_space': {'augment': {'pipeline': tune.choice([[], [{'op': 'rotate'}]])}}}\n"),
        name="ops")
    with pytest.raises(UserError, match=r"unknown op 'rotate'; valid ops: flip, pad_crop"):
        spaces.load(path)


@pytest.mark.parametrize("body, message", [
    ("def space(:\n", r"failed to import: SyntaxError"),
    ("x = 1\n", r"has no function space\(\.\.\.\)"),
    ("def space():\n    return {'param_space': {}, 'searcher': 'bayes'}\n",
     r"unknown searcher 'bayes'; valid searchers: grid, random, optuna"),
    ("def space():\n    return {'param_space': {}, 'metrik': 'val_acc'}\n",
     r"unknown key\(s\) metrik in search space .*; valid: param_space, metric"),
    ("def space():\n    return {'param_space': [1]}\n", r"param_space must be a dict"),
    ("def space():\n    return {'param_space': {'data': {'dataset': 'imagenet'}}}\n",
     r"unknown data.dataset 'imagenet'; valid: digits, cifar10, cifar100"),
])
def test_malformed_space_modules(tmp_path, body, message):
    with pytest.raises(UserError, match=message):
        spaces.load(write_space(tmp_path, body))


def test_unknown_space_and_argument():
    with pytest.raises(UserError, match=r"unknown search space 'nope'; valid search spaces: .*baseline.*quickstart"):
        spaces.load("nope")
    with pytest.raises(UserError, match=r"unknown argument\(s\) smok for search space 'baseline'; valid arguments: smoke"):
        spaces.load("baseline", {"smok": True})


def test_optuna_define_by_run_space_is_checked_through_a_real_trial():
    spec = spaces.load("optuna_lr_wd")
    [example] = spaces.examples(spec["param_space"])
    assert 1e-3 <= example["optim"]["lr"] <= 0.5 and example["model"]["name"] == "small_cnn"
    with pytest.raises(UserError, match=r"unknown model.name 'resnet7'"):
        spaces.load("optuna_lr_wd", {"model": "resnet7"})


def test_flatten_is_what_tune_unflattens():
    from ray.tune.utils.util import unflatten_dict

    config = {"optim": {"lr": 0.1, "milestones": [1, 2]}, "seed": 3, "augment": {"pipeline": []}}
    assert unflatten_dict(spaces.flatten(config)) == config
