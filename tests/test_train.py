import math

import pytest
import torch
import torch.nn.functional as F

from searchlab import regimes
from searchlab.augment import Pipeline
from searchlab.config import resolve
from searchlab.data import load_dataset, normalize
from searchlab.models import build_model
from searchlab.train import evaluate, lr_at, make_optimizer, train_epoch


def optim(**kw):
    return resolve({"optim": kw})["optim"]


def test_cosine_schedule_with_warmup_closed_form():
    o = optim(lr=0.2, epochs=10, schedule="cosine", warmup_epochs=2)
    assert lr_at(o, 1) == pytest.approx(0.1)
    assert lr_at(o, 2) == pytest.approx(0.2)
    assert lr_at(o, 6) == pytest.approx(0.1)  # halfway through the cosine
    assert lr_at(o, 10) == pytest.approx(0.0, abs=1e-12)


def test_step_schedule_matches_torch_multistep():
    o = optim(lr=0.1, epochs=8, schedule="step", milestones=[0.5, 0.75], gamma=0.1)
    ref_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    ref = torch.optim.lr_scheduler.MultiStepLR(ref_opt, milestones=[4, 6], gamma=0.1)
    for epoch in range(8):
        assert lr_at(o, epoch) == pytest.approx(ref.get_last_lr()[0])
        ref_opt.step()
        ref.step()
    assert lr_at(optim(lr=0.3, schedule="constant"), 7.5) == 0.3


def test_training_learns_digits_and_evaluate_matches_manual():
    torch.manual_seed(0)
    data = load_dataset("digits")
    model = build_model("small_cnn", 10, in_channels=1)
    o = optim(lr=0.1, batch_size=64, epochs=4, weight_decay=5e-4)
    opt = make_optimizer(model, o)
    _, acc_before = evaluate(model, data.val, data.mean, data.std)
    for epoch in range(4):
        loss, acc = train_epoch(model, data, opt, o, epoch, Pipeline([]), torch.Generator().manual_seed(epoch))
    val_loss, val_acc = evaluate(model, data.val, data.mean, data.std)
    assert val_acc > 0.85 > acc_before + 0.3  # chance is 0.1
    with torch.no_grad():
        logits = model.eval()(normalize(data.val.x, data.mean, data.std))
    assert val_loss == pytest.approx(F.cross_entropy(logits, data.val.y).item(), rel=1e-5)
    assert val_acc == pytest.approx((logits.argmax(1) == data.val.y).float().mean().item())
    assert loss < math.log(10)


def test_non_finite_loss_raises():
    data = load_dataset("digits", train_size=256)
    model = build_model("small_cnn", 10, in_channels=1)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    o = optim(batch_size=64, epochs=1)
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        train_epoch(model, data, make_optimizer(model, o), o, 0, Pipeline([]), torch.Generator())


@pytest.mark.parametrize("pipeline, mix", [
    ("augmix", None),
    ("trivialaugment", None),
    ("autoaugment_cutout", {"name": "cutmix", "alpha": 1.0, "p": 1.0}),
    ("standard", {"name": "manifold_mixup", "alpha": 2.0, "layers": [0, 1, 2]}),
])
def test_every_kind_of_augmentation_trains(cifar_data, pipeline, mix, monkeypatch):
    """One epoch per kind through the same loop the trainable runs; mixed targets are soft."""
    data = load_dataset("cifar10", train_size=256, val_size=64, test_size=64, root=cifar_data)
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    o = optim(batch_size=64, epochs=1)
    augment = Pipeline(pipeline, mix, num_classes=10)
    seen, forward = [], regimes.mixed_forward

    def recording(*args):
        logits, target = forward(*args)
        seen.append(target)
        return logits, target

    monkeypatch.setattr(regimes, "mixed_forward", recording)
    loss, acc = train_epoch(model, data, make_optimizer(model, o), o, 0, augment, torch.Generator().manual_seed(0))
    assert math.isfinite(loss) and 0 <= acc <= 1 and len(seen) == 4
    if mix:
        assert all(t.shape == (64, 10) and torch.allclose(t.sum(1), torch.ones(64)) for t in seen)
