"""The extension tables of a sweep (TRAINABLES, SEARCHERS, SCHEDULERS) and of a trial (EVALS),
each tested by looping over it, and the spec keys that name their entries."""
from pathlib import Path

import numpy as np
import pytest
import torch

from searchlab import spaces, sweep
from searchlab.config import resolve
from searchlab.data import Dataset, Split, load_dataset, normalize
from searchlab.errors import UserError
from searchlab.corruptions import CORRUPTIONS
from searchlab.evals import EVALS, numbers_and_arrays
from searchlab.models import build_model

TINY_CKA = str(Path(__file__).parent / "spaces" / "tiny_cka.py")


def write_space(tmp_path, spec_source):
    path = tmp_path / "space.py"
    path.write_text(f"def space():\n    return {spec_source}\n")
    return str(path)


@pytest.mark.parametrize("name", EVALS)
def test_every_evaluation_returns_the_metrics_it_declares(name, tmp_path):
    g = torch.Generator().manual_seed(0)
    split = lambda n: Split(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),  # noqa: E731
                            torch.randint(0, 10, (n,), generator=g))
    data = Dataset("fake", 10, split(16), split(16), split(16), torch.full((3,), 0.5), torch.full((3,), 0.25))
    torch.manual_seed(0)
    model = build_model("small_cnn", 10)
    # Its test images in the CIFAR-10-C layout (5 severity blocks), for the corruptions evaluation.
    (tmp_path / "cifar10-c").mkdir()
    images = data.test.x[:4].permute(0, 2, 3, 1).numpy()
    for corruption in CORRUPTIONS:
        np.save(tmp_path / "cifar10-c" / f"{corruption}.npy", np.concatenate([images] * 5))
    np.save(tmp_path / "cifar10-c" / "labels.npy", np.tile(data.test.y[:4].numpy(), 5))
    cfg = resolve({"data": {"dataset": "cifar10", "root": str(tmp_path)}, "eval": {"at_end": [name]},
                   "fourier": {"images": 2}, "lowpass": {"images": 8}})
    numbers, arrays = numbers_and_arrays(EVALS[name].run(model, data, cfg))
    assert list(numbers) == list(EVALS[name].metrics(cfg))
    assert all(isinstance(v, float) for v in numbers.values())
    assert all(a.ndim in (1, 2) for a in arrays.values())


def test_clean_evaluation_is_accuracy_and_loss_of_the_logits():
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, in_channels=1).eval()
    metrics = EVALS["clean"].run(model, data, resolve({}))
    for split in ("val", "test"):
        part = getattr(data, split)
        with torch.no_grad():
            logits = model(normalize(part.x, data.mean, data.std))
        assert metrics[f"{split}_acc"] == pytest.approx((logits.argmax(1) == part.y).double().mean().item())
        assert metrics[f"{split}_loss"] == pytest.approx(
            torch.nn.functional.cross_entropy(logits, part.y).item(), rel=1e-5)


@pytest.mark.parametrize("eval_group, message", [
    ({"every_epoch": ["robust"]}, r"unknown eval.every_epoch entry 'robust'; valid: clean, corruptions, fourier"),
    ({"at_end": "clean"}, r"eval.at_end must be a list of evaluation names"),
    ({"select": "val_accuracy"}, r"unknown eval.select 'val_accuracy'; valid: val_loss, val_acc, test_loss, test_acc"),
    ({"mode": "maximum"}, r"unknown eval.mode 'maximum'; valid: max, min"),
])
def test_bad_eval_group(eval_group, message):
    with pytest.raises(UserError, match=message):
        resolve({"eval": eval_group})


@pytest.mark.parametrize("name", sweep.TRAINABLES)
def test_every_trainable_resolves_and_declares_its_metrics(name):
    entry = sweep.TRAINABLES[name]
    cfg = entry.resolve({})
    every, at_end = entry.metrics(cfg)
    assert "epoch" in every and len(set(every)) == len(every) and entry.epochs(cfg) > 0
    assert callable(entry.run) and entry.run.__name__ == name  # trial folders are named after it


@pytest.mark.parametrize("name", sweep.SEARCHERS)
def test_every_searcher_builds(name):
    spec = spaces.load({"optuna": "optuna_lr_wd", "deepaa": "deepaa"}.get(name, "quickstart"))
    spec["searcher"] = name
    from ray.tune.search import Searcher
    from ray.tune.search.basic_variant import BasicVariantGenerator

    assert isinstance(sweep.build(sweep.SEARCHERS, "searcher", spec), (Searcher, BasicVariantGenerator))


@pytest.mark.parametrize("name", sweep.SCHEDULERS)
def test_every_scheduler_builds(name):
    from ray.tune.schedulers import TrialScheduler

    spec = {**spaces.load("quickstart"), "scheduler": name}
    built = sweep.build(sweep.SCHEDULERS, "scheduler", spec)
    assert built is None if name == "fifo" else isinstance(built, TrialScheduler)


def test_searcher_and_scheduler_options(tmp_path):
    spec = spaces.load(write_space(tmp_path, "{'param_space': {}, 'scheduler': 'asha', "
                                             "'scheduler_options': {'grace_period': 3, 'reduction_factor': 4}}"))
    asha = sweep.build(sweep.SCHEDULERS, "scheduler", spec)
    # Rungs from grace_period 3 by factors of 4 up to max_t, the default 10 epochs: just 3.
    assert asha._reduction_factor == 4 and [t for t, _ in asha._brackets[0]._rungs] == [3]
    optuna_spec = {**spaces.load("optuna_lr_wd"), "searcher_options": {"sampler": "random"}}
    assert type(sweep.build(sweep.SEARCHERS, "searcher", optuna_spec)._sampler).__name__ == "RandomSampler"
    for source, message in [
        ("{'param_space': {}, 'scheduler': 'asha', 'scheduler_options': {'grace': 3}}",
         r"unknown scheduler_options grace for scheduler 'asha'; valid: grace_period, reduction_factor, max_t"),
        ("{'param_space': {}, 'scheduler': 'hyperband'}", r"unknown scheduler 'hyperband'; valid schedulers: fifo, asha"),
        ("{'param_space': {}, 'trainable': 'finetune'}", r"unknown trainable 'finetune'; valid trainables: train"),
        ("{'param_space': {}, 'searcher_options': {'points': 3}}",
         r"unknown searcher_options points for searcher 'grid'; valid: none"),
    ]:
        with pytest.raises(UserError, match=message):
            spaces.load(write_space(tmp_path, source))
    with pytest.raises(UserError, match=r"unknown optuna sampler 'cmaes'; valid samplers: tpe, random"):
        sweep.build(sweep.SEARCHERS, "searcher", {**optuna_spec, "searcher_options": {"sampler": "cmaes"}})


def test_asha_max_t_counts_the_epochs_set_through_variant():
    # tiny_cka sets each run's epochs in its variant (1, 3 and 3); the default would be 10.
    spec = {**spaces.load(TINY_CKA), "scheduler": "asha"}
    assert sweep.max_epochs(spec) == 3
    assert sweep.build(sweep.SCHEDULERS, "scheduler", spec)._max_t == 3


def test_a_metric_no_trial_reports_is_rejected(tmp_path):
    with pytest.raises(UserError, match=r"metric 'val_accuracy' is not reported by every epoch of trainable "
                                        r"'train'; it reports: epoch, train_loss, train_acc, val_loss, val_acc"):
        spaces.load(write_space(tmp_path, "{'param_space': {}, 'metric': 'val_accuracy'}"))
    with pytest.raises(UserError, match=r"val_acc_at_best comes only with the last epoch"):
        spaces.load(write_space(tmp_path, "{'param_space': {'eval': {'at_end': ['clean']}}, "
                                          "'metric': 'val_acc_at_best'}"))
    spec = spaces.load(write_space(tmp_path, "{'param_space': {'eval': {'select': 'val_loss', 'mode': 'min'}}, "
                                             "'metric': 'best_val_loss', 'mode': 'min'}"))
    assert spec["metric"] == "best_val_loss"
