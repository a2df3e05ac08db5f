"""Training regimes: what a training batch becomes and what the loss is. No Ray.

A regime is ``regime(model, x, y, augment, generator, normalize, **params) -> (loss, logits)``:
``x`` a uint8 batch (N, C, H, W) and ``y`` its labels, ``augment`` the epoch's ``Pipeline`` (ops and
mix), ``normalize`` turns uint8 images into the model's float input, and ``params`` come from the
config group named after the regime (e.g. ``augmix_jsd``). It returns the loss to minimise and N
rows of logits, scored against ``y`` for the training accuracy. The trial config names the regime
(``regime``); ``train.phase_at`` picks it per epoch.
"""
import torch
import torch.nn.functional as F

from searchlab.augment import Pipeline, mixes
from searchlab.augment.policies import augmix, augmix_jsd as jensen_shannon
from searchlab.errors import UserError
from searchlab.models import build_model, mix_points


def mixed_forward(model, x, y, augment, generator):
    """``model`` on normalised images ``x`` with the pipeline's mix: (logits, targets).

    Targets are ``y`` when nothing is mixed, else soft labels (N, classes). Manifold mixup blends
    hidden states in a forward hook after one of ``models.mix_points``, so models need no mixing
    code of their own.
    """
    if augment.mix is None:
        return model(x), y
    kind, function, params = augment.mixer()
    y = mixes.soft(y, augment.num_classes)
    if kind == "input":
        x, y = function(x, y, generator, **params)
        return model(x), y
    layer, mix, y = function(y, generator, **params)
    if layer == 0:
        return model(mix(x)), y
    handle = mix_points(model)[layer - 1].register_forward_hook(lambda module, inputs, out: mix(out))
    try:
        return model(x), y
    finally:
        handle.remove()


def standard(model, x, y, augment, generator, normalize):
    """Cross-entropy on the augmented (and possibly mixed) batch."""
    x = augment.images(x, generator)
    logits, target = mixed_forward(model, normalize(x), y, augment, generator)
    return F.cross_entropy(logits, target), logits


def augmix_jsd(model, x, y, augment, generator, normalize, weight=12.0, **augmix_params):
    """AugMix with its Jensen-Shannon consistency loss (Hendrycks et al. 2020).

    As the reference (augmix/cifar.py): the pipeline's images (typically flip + crop) are the clean
    view, two AugMix draws of them the others; the three go through the model as one batch (so
    BatchNorm sees all of them), and the loss is the cross-entropy of the clean view plus
    ``weight`` times the Jensen-Shannon divergence of the three predictions. Accuracy is scored on
    the clean view.
    """
    if augment.mix is not None:
        raise ValueError(f"augmix_jsd mixes no batches (augment.mix must be None, got {augment.mix})")
    clean = augment.images(x, generator)
    views = [clean, augmix(clean, generator, **augmix_params), augmix(clean, generator, **augmix_params)]
    logits = model(normalize(torch.cat(views))).split(len(x))
    loss = F.cross_entropy(logits[0], y) + weight * jensen_shannon(*logits)
    return loss, logits[0]


# name -> regime(model, x, y, augment, generator, normalize, **params of the config group `name`)
REGIMES = {
    "standard": standard,
    "augmix_jsd": augmix_jsd,
}


def check(name, params, pipeline, mix):
    """Raise a one-line UserError when regime ``name`` cannot run with these parameters and this
    augmentation: a dry run on two small images through a small model, before any trial starts.

    Mixes inside a model are left to the trial, which knows the model's mix points.
    """
    if name not in REGIMES:
        raise UserError(f"unknown regime {name!r}; valid regimes: {', '.join(REGIMES)}")
    if mix is not None and mixes.MIXES[mix["name"]][0] == "model":
        mix = None
    x, y = torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 1])
    try:
        REGIMES[name](build_model("small_cnn", 2), x, y, Pipeline(pipeline, mix, num_classes=2),
                      torch.Generator().manual_seed(0), lambda images: images.float(), **params)
    except Exception as e:
        raise UserError(f"regime {name!r} with {params or 'no parameters'} and augment mix {mix!r} "
                        f"fails: {type(e).__name__}: {e}") from e
