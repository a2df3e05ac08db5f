"""Refinement (He et al.): the switch, its learning rate, gradual decay, and the evaluations it
adds (clean training subset, representation spectrum), without Ray."""
import numpy as np
import pytest
import torch
from scipy import stats

from searchlab.augment import Pipeline, mix as mixes
from searchlab.config import resolve
from searchlab.data import Dataset, Split
from searchlab.errors import UserError
from searchlab.evals import EVALS, trends
from searchlab.models import DROPOUT_MODELS, build_model
from searchlab.train import evaluate, learning_rate, lr_at, phase_at, total_epochs

MIXUP = {"name": "mixup", "alpha": 1.0}


def refined(refine, epochs=10, **config):
    return resolve({"optim": {"epochs": epochs, "schedule": "step", "milestones": [4, 8], "gamma": 0.1},
                    "augment": {"pipeline": "autoaugment_cutout", "mix": MIXUP}, "refine": refine, **config})


# ---- the switch -----------------------------------------------------------------------------

def test_appended_refinement_switches_exactly_at_t1_with_the_last_stage_rate():
    cfg = refined({"epochs": 3})
    assert total_epochs(cfg) == 13
    seen = [phase_at(cfg, epoch) for epoch in range(13)]
    assert seen[:10] == [("autoaugment_cutout", MIXUP, "standard")] * 10
    assert seen[10:] == [("standard", None, "standard")] * 3
    # The step schedule's last stage (0.1 / 100) from the switch on, as the schedule left it.
    assert [learning_rate(cfg, t) for t in (3.9, 7.9, 9.5, 10, 10.01, 13)] == pytest.approx(
        [0.1, 0.01, 0.001, 0.001, 0.001, 0.001])


def test_fixed_budget_switch_at_start_epoch_with_an_explicit_rate():
    cfg = refined({"start_epoch": 6, "lr": 0.003, "pipeline": "none"})
    assert total_epochs(cfg) == 10
    assert [phase_at(cfg, e).pipeline for e in range(10)] == ["autoaugment_cutout"] * 6 + ["none"] * 4
    assert [phase_at(cfg, e).mix for e in range(10)] == [MIXUP] * 6 + [None] * 4
    # Up to the end of epoch 6 the schedule (0.1, then 0.01 after epoch 4); then refine.lr.
    for t in (1, 4.5, 6):
        assert learning_rate(cfg, t) == lr_at(cfg["optim"], t)
    assert [learning_rate(cfg, t) for t in (6.01, 9, 10)] == [0.003] * 3


def test_no_refinement_is_the_plain_schedule():
    cfg = refined({})
    assert total_epochs(cfg) == 10 and phase_at(cfg, 9) == ("autoaugment_cutout", MIXUP, "standard")
    assert all(learning_rate(cfg, t) == lr_at(cfg["optim"], t) for t in np.linspace(0, 10, 41))


@pytest.mark.parametrize("refine, message", [
    ({"epochs": 2, "start_epoch": 5}, "not both"),
    ({"start_epoch": 11}, r"refine.start_epoch must be None or a whole number of epochs in 0..10"),
    ({"epochs": -1}, r"refine.epochs must be a whole number"),
    ({"epochs": 2, "lr": "small"}, r"refine.lr must be 'final' or a learning rate"),
    ({"gradual": True}, r"refine.gradual needs refinement epochs"),
    ({"epochs": 2, "pipeline": "blur"}, r"unknown augment preset 'blur'"),
    ({"epoch": 2}, r"unknown key\(s\) epoch in refine; valid: epochs, start_epoch"),
])
def test_bad_refine_configs(refine, message):
    with pytest.raises(UserError, match=message):
        refined(refine)


def test_spectrum_class_must_be_one_of_the_dataset():
    with pytest.raises(UserError, match=r"spectrum.class must be a class of cifar10: 0..9, got 10"):
        resolve({"data": {"dataset": "cifar10"}, "spectrum": {"class": 10}})


def test_final_rate_after_cosine_is_refused():
    with pytest.raises(UserError, match="cosine would refine at learning rate 0"):
        resolve({"optim": {"schedule": "cosine"}, "refine": {"epochs": 2}})


# ---- gradual decay --------------------------------------------------------------------------

def test_gradual_decays_alpha_and_probability_linearly_to_zero():
    cutmix = {"name": "cutmix", "alpha": 1.0, "p": 0.8}
    for mix, key, full in [(MIXUP, "alpha", 1.0), ({"name": "manifold_mixup"}, "alpha", 2.0), (cutmix, "p", 0.8)]:
        cfg = refined({"epochs": 4, "gradual": True}, augment={"pipeline": "autoaugment_cutout", "mix": mix})
        phases = [phase_at(cfg, e) for e in range(14)]
        # Epoch k of T2 = 4 trains at the mean intensity of its span: 1 - (k + 1/2) / 4.
        assert [p.mix.get(key) for p in phases[10:]] == pytest.approx([full * (1 - (k + 0.5) / 4) for k in range(4)])
        assert all(p.mix == mix for p in phases[:10])
    # AutoAugment and cutout fade in probability; flip and crop (in the refinement pipeline) stay.
    ops = {spec["op"]: spec.get("p", 1.0) for spec in phase_at(cfg, 12).pipeline}
    assert ops == {"flip": 0.5, "pad_crop": 1.0, "autoaugment": pytest.approx(0.375), "cutout": pytest.approx(0.375)}


def test_gradual_mixup_mixes_less_and_cutmix_applies_less_as_measured():
    """Empirically, through the phases of gradual refinement over T2 = 2 epochs (intensity 3/4, then
    1/4): mixup's minority weight min(lam, 1 - lam) has its mean under Beta(a, a) for the faded a,
    and cutmix is applied with the faded probability."""
    generator = torch.Generator().manual_seed(0)
    x = torch.arange(2.0).view(2, 1, 1, 1).expand(2, 3, 2, 2).contiguous()
    y = mixes.soft(torch.tensor([0, 1]), 2)
    cfg = refined({"epochs": 2, "gradual": True}, augment={"pipeline": "standard", "mix": MIXUP})
    for epoch, alpha in [(10, 0.75), (11, 0.25)]:
        mix = phase_at(cfg, epoch).mix
        assert mix["alpha"] == pytest.approx(alpha)
        weights = [mixes.mixup(x, y, generator, alpha=mix["alpha"])[1][0].max().item() for _ in range(4000)]
        expected = stats.beta(alpha, alpha).expect(lambda lam: min(lam, 1 - lam))
        # A random permutation of two rows pairs a row with itself half the time: minority weight 0.
        assert np.mean(1 - np.array(weights)) == pytest.approx(expected / 2, abs=0.015)
    assert torch.equal(mixes.mixup(x, y, generator, alpha=0.0)[0], x)  # alpha 0 mixes nothing

    cfg = refined({"epochs": 2, "gradual": True},
                  augment={"pipeline": "standard", "mix": {"name": "cutmix", "alpha": 1.0, "p": 0.8}})
    labels = torch.arange(16) % 2
    images = (labels.view(-1, 1, 1, 1) * 255).expand(16, 3, 32, 32).to(torch.uint8).contiguous()
    for epoch, p in [(10, 0.6), (11, 0.2)]:
        augment = Pipeline([], phase_at(cfg, epoch).mix, 2)
        applied = [not torch.equal(augment(images, labels, generator)[0], images.float()) for _ in range(2000)]
        # A box can come out empty (lam > 0.996 on 32 x 32): applied slightly less than p.
        assert np.mean(applied) == pytest.approx(p, abs=0.035)


# ---- metrics ------------------------------------------------------------------------------------

def tiny_data(n=60):
    generator = torch.Generator().manual_seed(0)
    def split(k):
        return Split(torch.randint(0, 256, (k, 3, 8, 8), generator=generator, dtype=torch.uint8),
                     torch.arange(k) % 3)
    return Dataset("tiny", 3, split(n), split(10), split(10), torch.full((3,), 0.5), torch.full((3,), 0.25))


def trained_in_train_mode(data):
    model = build_model("small_cnn", 3)
    model.train()
    with torch.no_grad():  # non-trivial running statistics, different from any batch's own
        for _ in range(3):
            model((data.train.x.float() / 255 - 0.3) / 0.2)
    return model


def test_train_clean_is_the_unaugmented_subset_in_eval_mode():
    data, cfg = tiny_data(), resolve({"train_clean": {"images": 40}})
    model = trained_in_train_mode(data)
    metrics = EVALS["train_clean"].run(model, data, cfg)
    assert set(metrics) == set(EVALS["train_clean"].metrics(cfg)) == {"train_clean_loss", "train_clean_acc"}
    loss, acc = evaluate(model, Split(data.train.x[:40], data.train.y[:40]), data.mean, data.std)
    assert (metrics["train_clean_loss"], metrics["train_clean_acc"]) == pytest.approx((loss, acc), rel=1e-6)
    # Batch statistics (train mode) would give another loss: the check above can tell them apart.
    model.train()
    with torch.no_grad():
        x = (data.train.x[:40].float() / 255 - data.mean.view(1, 3, 1, 1)) / data.std.view(1, 3, 1, 1)
        train_mode = torch.nn.functional.cross_entropy(model(x), data.train.y[:40]).item()
    assert abs(train_mode - loss) > 1e-4


def test_spectrum_is_the_singular_values_of_the_feature_covariance():
    data, cfg = tiny_data(), resolve({"spectrum": {"images": 50, "class": 1}})
    model = trained_in_train_mode(data)
    arrays = EVALS["spectrum"].run(model, data, cfg)
    # Independently: the small CNN's penultimate features are its pooled last stage.
    model.eval()
    with torch.no_grad():
        x = (data.train.x[:50].float() / 255 - data.mean.view(1, 3, 1, 1)) / data.std.view(1, 3, 1, 1)
        features = model.stages(model.stem(x)).mean((2, 3)).double().numpy()
    labels = data.train.y[:50].numpy()
    for name, rows in [("spectrum_all", features), ("spectrum_class1", features[labels == 1])]:
        expected = np.linalg.svd(np.cov(rows, rowvar=False), compute_uv=False)
        assert arrays[name].shape == (32,)
        np.testing.assert_allclose(arrays[name], expected, rtol=1e-6, atol=1e-9)
        assert np.all(np.diff(arrays[name]) <= 0)  # largest first


def test_trends_max_and_median_of_the_last_ten():
    accs = list(np.random.default_rng(0).uniform(size=13))
    history = [{"test_acc": a} for a in accs]
    assert trends(history) == {"test_acc_max": max(accs), "test_acc_median10": float(np.median(accs[3:]))}
    assert trends(history[:4])["test_acc_median10"] == float(np.median(accs[:4]))
    assert trends([{"val_acc": 1.0}]) == {}


def test_dropout_is_a_model_option():
    assert {"wrn28_10", "wrn28_2", "wrn40_2"} <= set(DROPOUT_MODELS)
    model = build_model("wrn28_2", 10, dropout=0.3)
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.3] * 12
    assert not any(isinstance(m, torch.nn.Dropout) for m in build_model("wrn28_2", 10).modules())
    with pytest.raises(UserError, match=r"model 'resnet20' has no dropout; models with model.dropout: .*wrn28_10"):
        resolve({"model": {"name": "resnet20", "dropout": 0.3}})
