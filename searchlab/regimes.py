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

from searchlab.augment import Pipeline, mixes, validate
from searchlab.augment.policies import augmix, augmix_jsd as jensen_shannon
from searchlab.errors import UserError
from searchlab.models import build_model, mix_points
from searchlab.splitbn import INTERPOLATIONS, branch, frozen_statistics


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


def splitbn(model, x, y, augment, generator, normalize, main, aux, split=True, aux_loss_weight=0.5,
            pgd=None, shared_affine=False, lambdas=(), interpolate="probs", **evaluation):
    """Split BatchNorm (Merchant et al.): a weak and a strong view of every image, one forward.

    The ``main`` pipeline makes the weak view, the ``aux`` pipeline (or ``"pgd"``: an adversarial
    view, as AdvProp) the strong one. With ``split`` the model runs on branch ``split`` (weak half
    through the main BatchNorm, strong half through the aux one); without it both views share one
    BatchNorm (the paper's ablations). The loss weighs the aux view's cross-entropy by
    ``aux_loss_weight`` and the main view's by the rest (0.5: the mean of the two). Accuracy is
    scored on the main view. ``shared_affine`` is read when the model is converted
    (``splitbn.convert``), ``lambdas``, ``lambda`` and ``interpolate`` by the evaluations.
    """
    if augment.mix is not None:
        raise ValueError(f"splitbn mixes no batches (augment.mix must be None, got {augment.mix})")
    if not 0 <= aux_loss_weight <= 1:
        raise ValueError(f"aux_loss_weight must be in [0, 1], got {aux_loss_weight}")
    lambdas = [*lambdas, evaluation.get("lambda", 0.0)]
    if not all(isinstance(lam, (int, float)) and 0 <= lam <= 1 for lam in lambdas):
        raise ValueError(f"lambda and lambdas must be numbers in [0, 1] (0: main branch, 1: aux), got {lambdas}")
    if interpolate not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolate {interpolate!r}; valid: {', '.join(INTERPOLATIONS)}")
    weak = Pipeline(main).images(x, generator)
    if aux == "pgd":
        with branch(model, "aux" if split else "main"):
            strong = pgd_attack(model, weak, y, normalize, generator, **(pgd or {}))
    else:
        strong = Pipeline(aux).images(x, generator)
    with branch(model, "split" if split else "main"):
        logits = model(normalize(torch.cat([weak, strong])))
    main_logits, aux_logits = logits.split(len(x))
    loss = torch.lerp(F.cross_entropy(main_logits, y), F.cross_entropy(aux_logits, y), aux_loss_weight)
    return loss, main_logits


def batch_augment(model, x, y, augment, generator, normalize, copies=8):
    """Batch Augmentation (Hoffer et al. 2020; DeepAA's Table 3): ``copies`` augmented copies of
    every image, each with its own draw of the pipeline, in one batch; the loss is the mean
    cross-entropy over all of them. Accuracy is scored on the first copy."""
    if not isinstance(copies, int) or copies < 1:
        raise ValueError(f"batch_augment.copies must be a whole number >= 1, got {copies!r}")
    views = torch.cat([augment.images(x, generator) for _ in range(copies)])
    logits, target = mixed_forward(model, normalize(views), y.repeat(copies), augment, generator)
    return F.cross_entropy(logits, target), logits[:len(x)]


def pgd_attack(model, x, y, normalize, generator, steps=4, epsilon=4 / 255, step_size=1 / 255,
               random_start=True):
    """An L-infinity PGD attack on uint8 images ``x`` (Madry et al.), as AdvProp's aux view.

    ``epsilon`` and ``step_size`` are in [0, 1] pixel units; ``steps`` signed-gradient ascent steps
    on the cross-entropy from a uniform random start in the epsilon ball. The model attacked is the
    one given, on its current branch and mode; BatchNorm running statistics are left as they were.
    Returns the adversarial images as floats in 0..255 (the pipelines' scale), not rounded.
    """
    if steps < 0 or epsilon < 0 or step_size < 0:
        raise ValueError(f"pgd needs steps, epsilon and step_size >= 0, got {steps}, {epsilon}, {step_size}")
    clean = x.float() / 255
    delta = torch.zeros_like(clean)
    if random_start:
        delta = (torch.rand(clean.shape, generator=generator, device=generator.device).to(clean.device)
                 * 2 - 1) * epsilon
    with frozen_statistics(model):
        for _ in range(steps):
            delta.requires_grad_(True)
            adversarial = (clean + delta).clamp(0, 1)
            loss = F.cross_entropy(model(normalize(adversarial * 255)), y)
            grad, = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + step_size * grad.sign()).clamp(-epsilon, epsilon)
    return ((clean + delta).clamp(0, 1) * 255).detach()


# name -> regime(model, x, y, augment, generator, normalize, **params of the config group `name`)
REGIMES = {
    "standard": standard,
    "augmix_jsd": augmix_jsd,
    "splitbn": splitbn,
    "batch_augment": batch_augment,
}


def check(name, params, pipeline, mix):
    """Raise a one-line UserError when regime ``name`` cannot run with these parameters and this
    augmentation: a dry run on two small images through a small model, before any trial starts.

    Mixes inside a model are left to the trial, which knows the model's mix points.

    A setting that passed is not dry-run again: a sweep's trials differ mostly in what this does not
    see (seeds, learning rates), and at ~0.1 s a check, a 256-trial grid spent about a minute of the
    driver's CPU checking the same setting before any trial started (tests/bench/bench_sweep.py).
    """
    key = repr((name, params, pipeline, mix))
    if key in _passed:
        return
    if name not in REGIMES:
        raise UserError(f"unknown regime {name!r}; valid regimes: {', '.join(REGIMES)}")
    if name == "splitbn":  # the two views' pipelines, with augment's own messages
        validate(params["main"])
        if params["aux"] != "pgd":
            validate(params["aux"])
    if mix is not None and mixes.MIXES[mix["name"]][0] == "model":
        mix = None
    x, y = torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 1])
    try:
        REGIMES[name](build_model("small_cnn", 2), x, y, Pipeline(pipeline, mix, num_classes=2),
                      torch.Generator().manual_seed(0), lambda images: images.float(), **params)
    except UserError:
        raise
    except Exception as e:
        group = f" (config group {name})" if params else ""
        raise UserError(f"regime {name!r}{group} with augment mix {mix!r} fails: "
                        f"{type(e).__name__}: {e}") from e
    _passed.add(key)


_passed = set()  # repr of the arguments of each check that passed
