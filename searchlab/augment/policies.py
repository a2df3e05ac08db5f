"""Augmentation policies: AutoAugment, RandAugment, TrivialAugment, AugMix and Deep AutoAugment.

Every policy is ``policy(x, generator, **params) -> x'`` on uint8 images (N, C, H, W), like the
stochastic ops, and draws its choices per image: a batch of identical images comes out different,
and a seeded generator replays exactly. torchvision's versions of these policies draw one choice per
call (per batch when given a batch), which is why they are written here; their published tables and
magnitude bins are reused from torchvision rather than retyped.

Images are grouped by the op they drew (``apply_per_image``), so a batch costs a few batched calls
(one for all geometric ops, one for all lookup-table ops, one per other op), not one call per image.
"""
import functools
import io
import math

import numpy as np
import torch

from searchlab.augment import ops, stochastic


# ------------------------------------------------------------------------------------------------
# Random draws. The generator may live on another device than the images, so every draw happens on
# the generator's device and is then moved (as in stochastic.py).
# ------------------------------------------------------------------------------------------------

def _rand(shape, generator, device):
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _randint(low, high, shape, generator, device):
    return torch.randint(low, high, shape, generator=generator, device=generator.device).to(device)


def _signs(shape, generator, device):
    return torch.where(_rand(shape, generator, device) < 0.5, -1.0, 1.0)


def sample_entries(probs, n, generator, device):
    """n draws from a categorical over len(probs) entries, by inverting the CDF of one uniform each.

    ``probs`` need not be normalised. This is how ``deepaa`` draws each layer's entries; the DeepAA
    search (searchlab.deepaa) draws its policy samples with it too, so the two agree draw for draw.
    """
    cdf = torch.cumsum(probs.to(device, torch.float64), 0)
    u = _rand(n, generator, device).double() * cdf[-1]
    # right=True skips zero-probability entries even when u lands exactly on a CDF step.
    return torch.searchsorted(cdf, u, right=True).clamp(max=len(probs) - 1)


def _dirichlet(alpha, n, k, generator, device):
    # torch.distributions takes no generator; this sampler (the one torchvision's AugMix uses) does.
    concentration = torch.full((n, k), float(alpha), device=generator.device)
    return torch._sample_dirichlet(concentration, generator=generator).to(device)


# ------------------------------------------------------------------------------------------------
# Core helper
# ------------------------------------------------------------------------------------------------

def apply_per_image(x, op_index, magnitude, names):
    """Apply op ``names[op_index[i]]`` with magnitude ``magnitude[i]`` to image i.

    A negative op index leaves that image unchanged. The geometric ops (``ops.MATRICES``) of a batch
    go through one affine warp with a matrix per image, the lookup-table ops (``ops.LUTS``) through
    one table lookup with a table per image, and each other op (looked up in ``ops.OPS`` at call
    time) through one call for all images that drew it: at a few hundred images per batch, the cost
    is mostly the number of tensor operations, not their size.
    """
    if len(x) == 0:
        return x.clone()
    h, w = x.shape[2:]
    warps = [k for k, name in enumerate(names) if name in ops.MATRICES]
    lookups = [k for k, name in enumerate(names) if name in ops.LUTS]
    others = [k for k in range(-1, len(names)) if k not in warps and k not in lookups]  # -1: unchanged
    # Sort the batch by op in the order warps, lookups, others: each op's images are then one slice
    # of the sorted batch, and the results, concatenated in that order, are in sorted order too.
    order = warps + lookups + others
    rank = torch.tensor([order.index(k) for k in range(-1, len(names))], device=x.device)
    key = rank[op_index.to(x.device).clamp(min=-1) + 1]
    perm = key.argsort(stable=True)
    counts = torch.bincount(key, minlength=len(order)).tolist()
    # index_select: indexing with a tensor, x[perm], takes a slower general path.
    images = dict(zip(order, x.index_select(0, perm).split(counts)))
    magnitudes = dict(zip(order, magnitude.to(x.device, torch.float32).index_select(0, perm).split(counts)))
    warps, lookups, others = ([k for k in group if len(images[k])] for group in (warps, lookups, others))

    results = []
    if warps:
        matrix = torch.cat([ops.MATRICES[names[k]](magnitudes[k].double(), h, w) for k in warps])
        results.append(ops.affine(torch.cat([images[k] for k in warps]), matrix))
    if lookups:
        luts = [ops.LUTS[names[k]](images[k], magnitudes[k]).expand(-1, x.shape[1], -1, -1) for k in lookups]
        results.append(ops.apply_lut(torch.cat([images[k] for k in lookups]), torch.cat(luts)))
    for k in others:
        results.append(images[k] if k < 0 else ops.OPS[names[k]](images[k], magnitudes[k]))
    # Back to batch order with one gather: writing the groups into place (index_copy_) is several
    # times slower on uint8.
    return torch.cat(results).index_select(0, perm.argsort())


# ------------------------------------------------------------------------------------------------
# torchvision magnitudes -> ops.OPS units
# ------------------------------------------------------------------------------------------------

ENHANCE_OPS = ("Brightness", "Color", "Contrast", "Sharpness")


def _from_torchvision(name, magnitude, height, width):
    """(centre, deviation) in ops.OPS units for an unsigned torchvision magnitude.

    The op then gets ``centre + sign * deviation``. torchvision feeds enhance ops ``1 + m`` and
    translates by ``int(m)`` pixels (truncation is symmetric in the sign, so it is applied here).
    """
    if name in ENHANCE_OPS:
        return 1.0, magnitude
    if name == "TranslateX":
        return 0.0, math.trunc(magnitude) / width
    if name == "TranslateY":
        return 0.0, math.trunc(magnitude) / height
    return 0.0, magnitude


@functools.lru_cache(maxsize=None)
def _space_tables(policy, num_magnitude_bins, height, width):
    """Op names and (centres, deviations [ops, bins], signed flags) of torchvision's RandAugment or
    TrivialAugmentWide augmentation space (``policy``: their class name), built once per (policy,
    bins, image size).

    Ops without a magnitude (a 0-d tensor in torchvision) keep centre and deviation 0.
    """
    # Imported here: torchvision takes seconds to import, which every trial worker would pay.
    from torchvision.transforms import RandAugment, TrivialAugmentWide

    if policy == "RandAugment":
        space = RandAugment()._augmentation_space(num_magnitude_bins, (height, width))
    else:
        space = TrivialAugmentWide()._augmentation_space(num_magnitude_bins)
    names = tuple(space)
    bins = max(magnitudes.numel() for magnitudes, _ in space.values())
    centre, deviation = torch.zeros(len(names)), torch.zeros(len(names), bins)
    for k, (name, (magnitudes, _)) in enumerate(space.items()):
        for b, m in enumerate(magnitudes.tolist() if magnitudes.ndim else []):
            centre[k], deviation[k, b] = _from_torchvision(name, m, height, width)
    signed = torch.tensor([is_signed for _, is_signed in space.values()])
    return names, (centre, deviation, signed)


# ------------------------------------------------------------------------------------------------
# AutoAugment (Cubuk et al. 2019): the published CIFAR-10, SVHN and ImageNet sub-policies
# ------------------------------------------------------------------------------------------------

AUTOAUGMENT_POLICIES = ("imagenet", "cifar10", "svhn")  # torchvision's AutoAugmentPolicy values


@functools.lru_cache(maxsize=None)
def _autoaugment_tables(policy, height, width):
    """Op names and, per sub-policy and slot, op index, probability, centre, deviation, signed
    (tensors [S, 2])."""
    if policy not in AUTOAUGMENT_POLICIES:
        raise ValueError(f"unknown AutoAugment policy {policy!r}; valid: {', '.join(AUTOAUGMENT_POLICIES)}")
    from torchvision.transforms import AutoAugment, AutoAugmentPolicy  # seconds to import: see _space_tables

    reference = AutoAugment(AutoAugmentPolicy(policy))
    space = reference._augmentation_space(10, (height, width))  # AutoAugment's 10 magnitude bins
    names = sorted({name for sub in reference.policies for name, _, _ in sub})
    op, prob, centre, deviation, signed = (torch.zeros(len(reference.policies), 2) for _ in range(5))
    for s, sub in enumerate(reference.policies):
        for slot, (name, p, level) in enumerate(sub):
            magnitudes, is_signed = space[name]
            m = float(magnitudes[level]) if level is not None else 0.0
            op[s, slot], prob[s, slot], signed[s, slot] = names.index(name), p, is_signed
            centre[s, slot], deviation[s, slot] = _from_torchvision(name, m, height, width)
    return names, (op.long(), prob, centre, deviation, signed.bool())


def autoaugment(x, generator, policy="cifar10"):
    """AutoAugment: each image draws one of the 25 sub-policies; each of its two ops fires with its
    own probability, signed ops get a random sign, all independently per image."""
    n, _, h, w = x.shape
    names, tables = _autoaugment_tables(policy, h, w)
    op, prob, centre, deviation, signed = (t.to(x.device) for t in tables)
    sub = _randint(0, len(op), (n,), generator, x.device)
    for slot in range(2):
        fires = _rand(n, generator, x.device) < prob[sub, slot]
        sign = torch.where(signed[sub, slot], _signs(n, generator, x.device), 1.0)
        magnitude = centre[sub, slot] + sign * deviation[sub, slot]
        x = apply_per_image(x, torch.where(fires, op[sub, slot], -1), magnitude, names)
    return x


# ------------------------------------------------------------------------------------------------
# RandAugment (Cubuk et al. 2020) and TrivialAugment Wide (Mueller & Hutter 2021), op sets and
# magnitude bins as torchvision's
# ------------------------------------------------------------------------------------------------

def randaugment(x, generator, n=2, m=9, num_magnitude_bins=31):
    """RandAugment: n ops per image, each uniform over torchvision's 14 ops, all at magnitude bin m
    of num_magnitude_bins (m=9 of 31 is torchvision's default); signed ops get a random sign."""
    if not 0 <= m < num_magnitude_bins:
        raise ValueError(f"randaugment: m must be in [0, {num_magnitude_bins - 1}] "
                         f"(a bin of num_magnitude_bins={num_magnitude_bins}), got {m}")
    count, _, h, w = x.shape
    names, tables = _space_tables("RandAugment", num_magnitude_bins, h, w)
    centre, deviation, signed = (t.to(x.device) for t in tables)
    for _ in range(n):
        op = _randint(0, len(names), (count,), generator, x.device)
        sign = torch.where(signed[op], _signs(count, generator, x.device), 1.0)
        x = apply_per_image(x, op, centre[op] + sign * deviation[op, m], names)
    return x


def trivialaugment(x, generator, num_magnitude_bins=31):
    """TrivialAugment Wide: one op per image, op and magnitude bin uniform, random sign."""
    count, _, h, w = x.shape
    names, tables = _space_tables("TrivialAugmentWide", num_magnitude_bins, h, w)
    centre, deviation, signed = (t.to(x.device) for t in tables)
    op = _randint(0, len(names), (count,), generator, x.device)
    level = _randint(0, num_magnitude_bins, (count,), generator, x.device)
    sign = torch.where(signed[op], _signs(count, generator, x.device), 1.0)
    return apply_per_image(x, op, centre[op] + sign * deviation[op, level], names)


# ------------------------------------------------------------------------------------------------
# AugMix (Hendrycks et al. 2020), following the reference code (google-research/augmix,
# augmentations.py and cifar.py): op list, severity -> magnitude mapping, mixing
# ------------------------------------------------------------------------------------------------

# The reference excludes the enhance ops by default: they overlap with the ImageNet-C/CIFAR-C
# corruptions that AugMix is evaluated on. One difference remains: the reference resamples its
# geometric ops bilinearly, ops.OPS (like AutoAugment's PIL code) with nearest neighbours.
AUGMIX_OPS = ["AutoContrast", "Equalize", "Posterize", "Rotate", "Solarize",
              "ShearX", "ShearY", "TranslateX", "TranslateY"]
AUGMIX_ALL_OPS = AUGMIX_OPS + ["Color", "Contrast", "Brightness", "Sharpness"]
_AUGMIX_SIGNED = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


def _augmix_magnitude(name, level, height, width):
    """The reference's level -> op argument, level ~ U(0.1, severity) on a scale of 10.

    Its int() truncation is kept: e.g. rotation is a whole number of degrees, translation a whole
    number of pixels (up to a third of the image side).
    """
    if name == "Posterize":
        return 4 - (level * 4 / 10).floor()
    if name == "Rotate":
        return (level * 30 / 10).floor()
    if name == "Solarize":
        return 256 - (level * 256 / 10).floor()
    if name in ("ShearX", "ShearY"):
        return level * 0.3 / 10
    if name == "TranslateX":
        return (level * (width / 3) / 10).floor() / width
    if name == "TranslateY":
        return (level * (height / 3) / 10).floor() / height
    if name in ENHANCE_OPS:
        return level * 1.8 / 10 + 0.1
    return torch.zeros_like(level)  # AutoContrast, Equalize


def _augmix_chain(x, generator, severity, depth, names):
    """One augmentation chain per image: depth ops (uniform in 1..3 per image when depth <= 0)."""
    n, _, h, w = x.shape
    depths = (torch.full((n,), depth, device=x.device) if depth > 0
              else _randint(1, 4, (n,), generator, x.device))
    for step in range(depth if depth > 0 else 3):
        op = _randint(0, len(names), (n,), generator, x.device)
        level = 0.1 + (severity - 0.1) * _rand(n, generator, x.device).double()  # doubles, as the reference
        sign = _signs(n, generator, x.device)
        magnitude = torch.zeros(n, dtype=torch.float64, device=x.device)
        for k, name in enumerate(names):
            chosen = op == k
            value = _augmix_magnitude(name, level, h, w)
            magnitude = torch.where(chosen, value * sign if name in _AUGMIX_SIGNED else value, magnitude)
        x = apply_per_image(x, torch.where(step < depths, op, -1), magnitude, names)
    return x


def _augmix_weights(n, width, alpha, generator, device):
    """Chain weights ~ Dirichlet(alpha, ..., alpha) [n, width] and skip weight m ~ Beta(alpha, alpha)."""
    weights = _dirichlet(alpha, n, width, generator, device)
    m = _dirichlet(alpha, n, 2, generator, device)[:, 0]  # Beta(a, a) is a 2-way Dirichlet(a, a)
    return weights, m


def augmix(x, generator, severity=3, width=3, depth=-1, alpha=1.0, all_ops=False):
    """AugMix: (1 - m) x + m sum_i w_i chain_i(x), mixed in float and rounded back to uint8."""
    if not 1 <= severity <= 10:
        raise ValueError(f"augmix: severity must be in [1, 10], got {severity}")
    names = AUGMIX_ALL_OPS if all_ops else AUGMIX_OPS
    with torch.autocast(x.device.type, enabled=False):  # exact whatever the caller's precision (speed.amp)
        weights, m = _augmix_weights(len(x), width, alpha, generator, x.device)
        mix = torch.zeros_like(x, dtype=torch.float32)
        for i in range(width):
            chain = _augmix_chain(x, generator, severity, depth, names)
            mix += weights[:, i, None, None, None] * chain.float()
        m = m[:, None, None, None]
        mixed = (1 - m) * x.float() + m * mix
        return mixed.round_().clamp_(0, 255).to(torch.uint8)


def augmix_jsd(logits_clean, logits_aug1, logits_aug2):
    """AugMix's Jensen-Shannon consistency loss: mean over the batch of
    (KL(p_clean||M) + KL(p_aug1||M) + KL(p_aug2||M)) / 3 with M the mean of the three softmaxes.

    The reference trains with cross-entropy on the clean logits plus 12 times this.
    """
    # In float32: under fp16 autocast the clamp's 1e-7 is below fp16's normal range.
    probs = [torch.softmax(logits.float(), dim=1) for logits in (logits_clean, logits_aug1, logits_aug2)]
    # As in the reference: clamping M keeps the KL finite when a probability underflows to 0.
    log_mixture = torch.clamp(sum(probs) / 3, 1e-7, 1).log()
    kl = [torch.nn.functional.kl_div(log_mixture, p, reduction="batchmean") for p in probs]
    return sum(kl) / 3


# ------------------------------------------------------------------------------------------------
# Deep AutoAugment (Zheng et al. 2022): a K-layer policy over the 139 entries of ops.deepaa_table()
# ------------------------------------------------------------------------------------------------

_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")

# The authors pad RandCrop and fill RandCutout (and RandCutout60, on ImageNet too) with the CIFAR
# mean colour: augmentation.py (mean_pad_randcrop, RandCutout, RandCutout60) in the search and
# DeepAA_evaluate/deep_autoaugment.py (mean_pad_randcrop, Cutout_default) in training. Their
# RandResizeCrop_imagenet crops inside the image and fills nothing; their geometric ops fill with
# black (ops.FILL).
DEEPAA_FILL = (125, 123, 114)


def _apply_stochastic(x, generator, name, magnitude, fill):
    """Table entries with their own per-image randomness; crop and cutout fill with ``fill``."""
    if name == "flip":  # the authors' RandFlip mirrors left-right when random.random() > 0.5
        return torch.where(_rand(len(x), generator, x.device)[:, None, None, None] < 0.5,
                           stochastic.flip(x, generator), x)
    if name == "cutout":
        # The authors' RandCutout draws a centre (x, y) uniform in [0, 32)^2 and passes
        # (int(x - 8), int(y - 8), int(x + 8), int(y + 8)), clipped to the image, to
        # ImageDraw.rectangle, which includes both corners: 17 x 17 pixels away from the border,
        # though their comment says 16. We keep 16: their box without its last row and column
        # (the two are the same where the box reaches the right or bottom edge). Their
        # RandCutout60 (ImageNet) draws the centre in the central 256 x 256 of the image; here it
        # is uniform over the whole image, which is the same for images up to 256 pixels.
        return stochastic.cutout(x, generator, size=int(magnitude), fill=fill)
    if name == "pad_crop":
        return stochastic.pad_crop(x, generator, padding=int(magnitude), fill=fill)
    if name == "random_resized_crop":
        return stochastic.random_resized_crop(x, generator)
    raise ValueError(f"unknown DeepAA table entry {name!r}")


@functools.lru_cache(maxsize=8)
def _entry_tables(table, device):
    """Per-table lookups, built once per (table, device): op names in table order, and per entry
    its op index and magnitude; per op name whether it is stochastic or geometric."""
    names = list(dict.fromkeys(name for name, _ in table))  # op names, in table order
    entry_op = torch.tensor([names.index(name) for name, _ in table], device=device)
    entry_magnitude = torch.tensor([0.0 if m is None else float(m) for _, m in table], device=device)
    stochastic_ops = [k for k, name in enumerate(names) if name not in ops.OPS]
    is_stochastic = torch.tensor([name not in ops.OPS for name in names], device=device)
    geometric = torch.tensor([name in _GEOMETRIC for name in names], device=device)
    return names, entry_op, entry_magnitude, stochastic_ops, is_stochastic, geometric


def apply_entries(x, entries, generator, table=None, mirror=False, fill=DEEPAA_FILL):
    """Apply entry ``entries[i]`` of a DeepAA table to image i: e.g. ``torch.arange(139)`` on 139
    copies of one image gives every transformation of it once.

    ``table`` defaults to ``ops.deepaa_table()``; ``mirror`` and ``fill`` are as in ``deepaa``. The
    stochastic entries (flip, crop, cutout) draw their per-image randomness from ``generator``.
    """
    table = ops.deepaa_table() if table is None else table
    names, entry_op, entry_magnitude, stochastic_ops, is_stochastic, geometric = _entry_tables(
        tuple(map(tuple, table)), x.device)
    entries = torch.as_tensor(entries, device=x.device)
    if len(entries) != len(x) or (len(entries) and not 0 <= int(entries.min()) <= int(entries.max()) < len(table)):
        raise ValueError(f"apply_entries: need one entry in 0..{len(table) - 1} per image ({len(x)} images), "
                         f"got {len(entries)} entries")
    n = len(x)
    op, magnitude = entry_op[entries], entry_magnitude[entries]
    if mirror:
        magnitude = torch.where(geometric[op], magnitude * _signs(n, generator, x.device), magnitude)
    x = apply_per_image(x, torch.where(is_stochastic[op], -1, op), magnitude, names)
    for k in stochastic_ops:
        rows = (op == k).nonzero().squeeze(1)
        if len(rows):
            # Entries sharing a stochastic op name share its magnitude (one cutout size per table).
            sub = _apply_stochastic(x.index_select(0, rows), generator, names[k], magnitude[rows[0]], fill)
            x = x.index_copy(0, rows, sub)
    return x


def deepaa(x, generator, policy_probs=None, table=None, mirror=True, policy=None, fill=DEEPAA_FILL):
    """Apply a Deep AutoAugment policy: for each layer k, every image draws one entry of the table
    from row k of ``policy_probs`` [K, len(table)] and it is applied (``apply_entries``).

    ``policy`` is the alternative to ``policy_probs``: the path of a policy file (see
    ``save_policy``), read again when the file changes; the table it was searched on comes with it.
    ``mirror`` flips the sign of the geometric ops' magnitude for half of the images, as the
    authors' evaluation code does (``random_mirror``), hence the default; their search never
    mirrors, so ``mirror=False`` applies exactly what was searched. ``fill`` is the colour of the crop's padding and of the cutout
    square: one value or one per channel, by default the authors' CIFAR mean colour (0 is black).
    """
    if (policy is None) == (policy_probs is None):
        raise ValueError("deepaa needs exactly one of policy_probs (a [K, 139] array) "
                         "or policy (a .npz path)")
    stochastic.fill_values(fill, x.shape[1], "deepaa")  # fail now, not when a crop is first drawn
    if policy is not None:
        loaded = _load_policy_cached(str(policy))
        policy_probs, table = loaded["policy_probs"], loaded["table"]
    table = ops.deepaa_table() if table is None else table
    probs = torch.as_tensor(policy_probs).detach().to(torch.float64)
    if probs.ndim != 2 or probs.shape[1] != len(table):
        raise ValueError(f"deepaa: policy_probs must have shape [K, {len(table)}], got {tuple(probs.shape)}")
    for layer in probs:
        x = apply_entries(x, sample_entries(layer, len(x), generator, x.device), generator, table, mirror, fill)
    return x


# ------------------------------------------------------------------------------------------------
# DeepAA policy files, in the layout of the authors' published policies
# (AIoT-MLSys-Lab/DeepAA: DeepAA_utils.save_policy, read by DeepAA_evaluate/deep_autoaugment.py):
#   policy_probs [K, 139] float, l_ops (18), l_mags (13), ops [139, 1] int (index into op_names),
#   mags [139, 1] int (magnitude level 0..l_mags-1), op_names [18] str.
# A level l of an op with range ops.RANGES[op] = (low, high) is the value
# low + l / (l_mags - 1) * (high - low); ops without a magnitude store the middle level. op_names uses
# the authors' names for the stochastic entries (RandFlip, RandCutout, RandCrop, ...), so files
# written here also load in their evaluation code.
# ------------------------------------------------------------------------------------------------

# The authors' names of the stochastic entries -> (table name, magnitude).
_AUTHOR_NAMES = {
    "RandFlip": ("flip", None), "RandCutout": ("cutout", 16), "RandCutout60": ("cutout", 60),
    "RandCrop": ("pad_crop", 4), "RandResizeCrop_imagenet": ("random_resized_crop", None),
}
_TABLE_TO_AUTHOR = {entry: name for name, entry in _AUTHOR_NAMES.items()}


def _encode_table(table):
    """A table as the authors' (op_names, ops [E, 1], mags [E, 1])."""
    op_names, ops_column, mags_column = [], [], []
    for name, magnitude in table:
        file_name = _TABLE_TO_AUTHOR.get((name, magnitude), name)
        if file_name not in op_names:
            op_names.append(file_name)
        if name in ops.RANGES:
            low, high = ops.RANGES[name]
            level = round((float(magnitude) - low) / (high - low) * (ops.DEEPAA_LEVELS - 1))
        else:
            level = (ops.DEEPAA_LEVELS - 1) // 2
        ops_column.append(op_names.index(file_name))
        mags_column.append(level)
    return op_names, np.array(ops_column, np.int32)[:, None], np.array(mags_column, np.int32)[:, None]


def _decode_table(op_names, ops_column, mags_column, l_mags):
    """The authors' arrays back to [(table name, magnitude or None)]."""
    table = []
    for op, level in zip(np.ravel(ops_column), np.ravel(mags_column)):
        if not 0 <= op < len(op_names):
            raise ValueError(f"op index {op} is out of range for the {len(op_names)} op_names")
        name = str(op_names[int(op)]).split(":")[0]  # the authors' names carry a ":(low,,high" suffix
        if name in _AUTHOR_NAMES:
            table.append(_AUTHOR_NAMES[name])
        elif name in ops.RANGES:
            low, high = ops.RANGES[name]
            table.append((name, low + int(level) / (l_mags - 1) * (high - low)))
        else:
            table.append((name, None))
    return table


def _same_entry(a, b):
    (name_a, mag_a), (name_b, mag_b) = a, b
    if name_a != name_b or (mag_a is None) != (mag_b is None):
        return False
    return mag_a is None or math.isclose(float(mag_a), float(mag_b), rel_tol=1e-6, abs_tol=1e-6)


def save_policy(path, policy_probs, table=None):
    """Write a DeepAA policy file (the authors' .npz layout) for ``policy_probs`` [K, len(table)]."""
    table = ops.deepaa_table() if table is None else table
    probs = np.asarray(torch.as_tensor(policy_probs).detach().cpu(), dtype=np.float32)
    _check_probs(probs, len(table), f"save_policy({path})")
    op_names, ops_column, mags_column = _encode_table(table)
    decoded = _decode_table(op_names, ops_column, mags_column, ops.DEEPAA_LEVELS)
    for entry, stored in zip(table, decoded):
        if not _same_entry(entry, stored):
            raise ValueError(f"save_policy: table entry {entry} is not one of the {ops.DEEPAA_LEVELS} "
                             "magnitude levels of ops.RANGES, so the file cannot store it")
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a bare path
        np.savez(f, policy_probs=probs, l_ops=np.int64(len(op_names)), l_mags=np.int64(ops.DEEPAA_LEVELS),
                 ops=ops_column, mags=mags_column, op_names=np.array(op_names))


def _check_probs(probs, entries, where):
    if probs.ndim != 2 or probs.shape[1] != entries or probs.shape[0] == 0:
        raise ValueError(f"{where}: policy_probs must have shape [K, {entries}] (one row per layer, "
                         f"one column per transformation), got {list(probs.shape)}")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError(f"{where}: policy_probs must be finite and non-negative")
    sums = probs.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1) > 1e-3)
    if len(bad):
        raise ValueError(f"{where}: row {bad[0]} of policy_probs sums to {sums[bad[0]]:.4g}, not 1 "
                         f"(each layer is a probability distribution over the {entries} transformations)")


def load_policy(path):
    """Read and validate a DeepAA policy file.

    Returns a dict with the file's arrays (policy_probs, ops, mags, op_names, l_ops, l_mags) and
    ``table``: the current ``ops.deepaa_table`` (small or large images) that the file matches. A
    policy is only meaningful with the table it was searched on, so any other table is an error.
    """
    with open(path, "rb") as f:
        return _parse_policy(path, f.read())


def _parse_policy(path, content):
    """load_policy for the bytes ``content`` of the file at ``path``."""
    where = f"policy file {path}"
    with np.load(io.BytesIO(content), allow_pickle=False) as data:
        missing = [key for key in ("policy_probs", "ops", "mags", "op_names") if key not in data]
        if missing:
            raise ValueError(f"{where}: missing key(s) {', '.join(missing)}; a DeepAA policy file holds "
                             "policy_probs, l_ops, l_mags, ops, mags, op_names")
        loaded = {key: data[key] for key in data.files}
    loaded["policy_probs"] = loaded["policy_probs"].astype(np.float64)
    l_mags = int(loaded.get("l_mags", ops.DEEPAA_LEVELS))
    try:
        stored = _decode_table(loaded["op_names"], loaded["ops"], loaded["mags"], l_mags)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    candidates = [ops.deepaa_table(large_images=False), ops.deepaa_table(large_images=True)]
    for table in candidates:
        if len(stored) == len(table) and all(map(_same_entry, stored, table)):
            break
    else:
        table = candidates[0]
        if len(stored) != len(table):
            detail = f"it has {len(stored)} transformations, the current table {len(table)}"
        else:
            k = next(k for k, (a, b) in enumerate(zip(stored, table)) if not _same_entry(a, b))
            detail = f"entry {k} is {stored[k]} in the file but {table[k]} in the current table"
        raise ValueError(f"{where} was searched on a different transformation table ({detail}); "
                         "a policy is only meaningful with the table it was searched on")
    _check_probs(loaded["policy_probs"], len(table), where)
    loaded["table"] = table
    return loaded


def _load_policy_cached(path):
    # A pipeline calls deepaa(policy=path) once per batch: parse each file once per process. The
    # key is the file's content, not its path: Tune reuses a worker (reuse_actors=True) for a trial
    # whose policy may have been rewritten at the same path. Size and mtime would miss a rewrite
    # of the same size within the file system's timestamp granularity; the bytes (a few kB) are
    # cheap to read.
    with open(path, "rb") as f:
        return _parse_policy_cached(path, f.read())


@functools.lru_cache(maxsize=16)
def _parse_policy_cached(path, content):
    return _parse_policy(path, content)


# name -> policy(x, generator, **params). The pipeline spec refers to policies by these names.
POLICIES = {
    "autoaugment": autoaugment,
    "randaugment": randaugment,
    "trivialaugment": trivialaugment,
    "augmix": augmix,
    "deepaa": deepaa,
}
