"""Centred kernel alignment (CKA) between the conv layers of two networks.

CKA (Kornblith et al. 2019) compares two representations of the same n examples through their
n x n kernel (gram) matrices K and L:

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) * HSIC(L, L))

The CKA study (DESIGN.md section 2, study 1) needs it for every pair of conv layers of two networks
on thousands of validation images, which does not fit in memory as full-size gram matrices.
``cka_matrix`` therefore uses the minibatch estimator of Nguyen et al. (2021): the HSIC terms are
summed over minibatches of the *same* images for both networks, and the ratio is taken at the end.
With the unbiased HSIC estimator (Song et al. 2012) the per-batch terms are unbiased, so the sum
does not depend on the batch size the way the biased one does.

Numerical conventions, because small differences here change published heatmaps:

- a network's grams are formed in its own precision (float32 for a float32 network, see
  ``_gram``), everything after them (centring, HSIC, sums over batches) in float64;
- no epsilon anywhere: CKA is scale-invariant, so an epsilon would pull layers with small
  activations towards 0. A zero denominator (e.g. a layer whose output is all zeros) gives nan.
  A constant but nonzero representation is not caught: its centred gram is zero only up to
  rounding, and the CKA computed from that residue is meaningless;
- negative unbiased estimates are kept as they are: clamping them to 0 would bias the mean over
  batches upwards for unrelated layers.

The RBF kernel's bandwidth follows Kornblith et al.'s reference code by default (``gram_rbf``).

This module knows nothing of Ray; it takes models and an iterable of batches.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

from searchlab.models import conv_layers, forward_with_hooks

KERNELS = ("linear", "rbf")
# How the RBF bandwidth is set from the data; see gram_rbf.
RBF_MEDIANS = ("kornblith", "distinct_pairs")


# --- kernels --------------------------------------------------------------------


def _float64(a) -> torch.Tensor:
    return torch.as_tensor(a).to(torch.float64)


def gram_linear(X) -> torch.Tensor:
    """Linear kernel X X^T of features X (n, p) (extra dims are flattened), as float64 (n, n)."""
    X = _float64(X)
    X = X.reshape(X.shape[0], -1)
    return X @ X.T


def gram_rbf(X, sigma_frac: float = 0.5, rbf_median: str = "kornblith") -> torch.Tensor:
    """RBF kernel exp(-|x_i - x_j|^2 / (2 sigma^2)), sigma set from the median distance.

    As in Kornblith et al. (2019), sigma scales with the data, which keeps CKA invariant to isotropic
    scaling. ``sigma_frac`` is their ``threshold``. Two conventions for the median:

    - ``"kornblith"`` (default): sigma^2 = sigma_frac^2 * the median of all n^2 squared distances,
      the n zero self-distances included, as in Kornblith et al.'s reference code (``gram_rbf`` in
      google-research/representation_similarity). Published RBF-CKA numbers come from that code:
      their demo data gives 0.65483.
    - ``"distinct_pairs"``: sigma = sigma_frac * the median of the n(n-1)/2 distances between
      distinct examples, the paper's wording ("the median distance between examples"). The zeros
      are left out, so sigma is slightly larger for small n; the same demo gives 0.65401.
    """
    return _rbf_from_linear(gram_linear(X), sigma_frac, rbf_median)


def _rbf_from_linear(G: torch.Tensor, sigma_frac: float, rbf_median: str) -> torch.Tensor:
    if len(G) < 2:
        raise ValueError(f"the RBF kernel's median distance needs at least 2 examples, got {len(G)}")
    # Squared distances from the linear gram, so that minibatch code only ever needs (n, n) matrices.
    sq_norms = G.diagonal()
    # Rounding can make a zero distance slightly negative; exp of it would exceed 1.
    sq_dist = (sq_norms[:, None] + sq_norms[None, :] - 2 * G).clamp_min(0)
    if rbf_median == "kornblith":
        # np.median of the full matrix: the mean of the two middle values for an even count
        # (torch.median would take the lower one).
        values = sq_dist.flatten().sort().values
        k = len(values)
        sigma_sq = sigma_frac**2 * (values[(k - 1) // 2] + values[k // 2]) / 2
    elif rbf_median == "distinct_pairs":
        i, j = torch.triu_indices(len(G), len(G), offset=1, device=G.device)
        dist = sq_dist[i, j].sqrt().sort().values
        k = len(dist)
        sigma_sq = (sigma_frac * (dist[(k - 1) // 2] + dist[k // 2]) / 2) ** 2
    else:
        raise ValueError(f"unknown rbf_median {rbf_median!r}; valid: {', '.join(RBF_MEDIANS)}")
    return torch.exp(-sq_dist / (2 * sigma_sq))


def _self_gram(X: torch.Tensor) -> torch.Tensor:
    """X X^T for features X (n, p), in X's precision, computing each symmetric block once.

    torch has no syrk, and X @ X.T costs a full product although half of it mirrors the other
    half. Here the right half of the columns comes from one product X @ X[h:].T (h = n/2: half
    the multiply-adds, at full speed), the top-left block X[:h] X[:h]^T is split the same way
    while it has 128 rows or more, and the blocks left of the diagonal are mirrored: 11/16 of the
    multiply-adds for n = 256. The smaller products run below full speed, so this takes about
    0.8x the time of X @ X.T (0.74..0.86 measured on 1 and 2 threads at n = 256, p = 4096..16384;
    other splits, e.g. batched diagonal blocks, did no better).

    The features are also split into two halves, and each product is formed as a batch of two
    half-products, summed: on 2 CPU threads each thread then computes a whole product on its own
    instead of sharing every narrow product with the other. This took the grams of ResNet-32 at
    batch 256 from 0.56x to 0.49x the time of its forward passes (medians of 9 interleaved runs;
    the whole CKA run gained 1-4%, within the noise of this shared machine; no change on 1
    thread). The split is the same for any number of threads, so that the result does not
    depend on it (CKA computed in a one-thread Ray actor and again in a CLI process must agree).
    """
    n, p = X.shape
    parts = 2 if p % 2 == 0 else 1
    halves = X.reshape(n, parts, p // parts).transpose(0, 1)  # (parts, n, p / parts), a view

    def product(rows: slice, cols: slice) -> torch.Tensor:  # X[rows] @ X[cols].T
        return torch.bmm(halves[:, rows], halves[:, cols].transpose(1, 2)).sum(0)

    G = X.new_empty(n, n)
    m = n
    while m >= 128 and m % 2 == 0:
        h = m // 2
        right = product(slice(0, m), slice(h, m))  # G[:m, h:m]
        G[:m, h:m] = right
        G[h:m, :h] = right[:h].T
        m = h
    G[:m, :m] = product(slice(0, m), slice(0, m))
    return G


def _gram(output: torch.Tensor, kernel: str, sigma_frac: float, rbf_median: str) -> torch.Tensor:
    """A layer's gram from its output, float32 for a float32 network's linear kernel, else float64."""
    # A gram does not depend on the order of the features, so a channels-last output (what
    # searchlab.data.normalize feeds the models) is read in memory order, a view, instead of being
    # copied into (C, H, W) order first.
    if output.dim() == 4 and output.is_contiguous(memory_format=torch.channels_last):
        output = output.permute(0, 2, 3, 1)
    # The gram is formed in the features' own precision (float32 from a network: as fast as the
    # forward pass, where float64 would be 2-3x slower) and everything after it, the HSIC terms and
    # their sums over batches, in float64; this moves CKA by about 1e-8.
    G = _self_gram(output.reshape(output.shape[0], -1))
    return G if kernel == "linear" else _rbf_from_linear(G.to(torch.float64), sigma_frac, rbf_median)


def _check_kernel(kernel: str, rbf_median: str = "kornblith") -> None:
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; valid kernels: {', '.join(KERNELS)}")
    if rbf_median not in RBF_MEDIANS:
        raise ValueError(f"unknown rbf_median {rbf_median!r}; valid: {', '.join(RBF_MEDIANS)}")


# --- HSIC and CKA -----------------------------------------------------------------
#
# Both estimators are inner products of transformed grams, <T(K), T(L)> / c(n), which is what lets
# the minibatch code compute every layer pair with one matrix product.


def _float64_copy(K: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """K as float64 in ``out`` (a float64 tensor of K's shape) or, without one, in a new tensor."""
    return K.to(torch.float64, copy=True) if out is None else out.copy_(K)


def _centre(K: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """H K H with H = I - 11^T/n, for one gram (n, n) or a stack (..., n, n), as float64 in ``out``
    or a new tensor."""
    # (H K H)_ij = K_ij - (row mean_i - mean/2) - (column mean_j - mean/2); in place on one copy,
    # since the stacks of the minibatch code are large (31 x 256 x 256 float64 = 16 MB).
    K = _float64_copy(K, out)
    half_mean = K.mean((-2, -1), keepdim=True) / 2
    rows = K.mean(-1, keepdim=True) - half_mean
    cols = K.mean(-2, keepdim=True) - half_mean
    return K.sub_(rows).sub_(cols)


def _u_centre(K: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """U-centring (Szekely & Rizzo 2014) of a symmetric gram (n, n) or a stack (..., n, n), as
    float64 in ``out`` or a new tensor.

    With K~ the gram with a zero diagonal, U_ij = K~_ij - r_i/(n-2) - r_j/(n-2) + s/((n-1)(n-2))
    for i != j (r: row sums of K~, s: its total) and U_ii = 0. Then <U(K), U(L)> / (n(n-3)) is
    exactly the unbiased HSIC estimator of Song et al. (2012).
    """
    n = K.shape[-1]
    K = _float64_copy(K, out)  # worked on in place, as in _centre
    K.diagonal(dim1=-2, dim2=-1).zero_()
    rows = K.sum(-1, keepdim=True)
    # U_ij = K~_ij - a_i - a_j with a_i = r_i/(n-2) - s/(2(n-1)(n-2)).
    a = rows / (n - 2) - rows.sum(-2, keepdim=True) / (2 * (n - 1) * (n - 2))
    K.sub_(a).sub_(a.transpose(-2, -1))
    K.diagonal(dim1=-2, dim2=-1).zero_()
    return K


def _transform(K: torch.Tensor, unbiased: bool, out: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """The transformed gram(s), float64 (in ``out`` if given), and the constant that turns their
    inner product into HSIC."""
    n = K.shape[-1]
    if unbiased:
        if n < 4:
            raise ValueError(f"unbiased HSIC needs at least 4 examples per batch, got {n}")
        return _u_centre(K, out), n * (n - 3)
    if n < 2:
        raise ValueError(f"HSIC needs at least 2 examples, got {n}")
    return _centre(K, out), (n - 1) ** 2


def _pair(K, L) -> tuple[torch.Tensor, torch.Tensor]:
    K, L = _float64(K), _float64(L)
    if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape != L.shape:
        raise ValueError(f"expected two square grams of the same size, got {tuple(K.shape)} and {tuple(L.shape)}")
    return K, L


def _hsic(K: torch.Tensor, L: torch.Tensor, unbiased: bool) -> torch.Tensor:
    TK, c = _transform(K, unbiased)
    TL, _ = _transform(L, unbiased)
    return (TK * TL).sum() / c


def hsic_biased(K, L) -> float:
    """tr(K H L H) / (n-1)^2 (Gretton et al. 2005), for grams K, L (n, n)."""
    return float(_hsic(*_pair(K, L), unbiased=False))


def hsic_unbiased(K, L) -> float:
    """The unbiased HSIC estimator of Song et al. (2012), as used by Nguyen et al. (2021); n >= 4.

    Can be negative when K and L are (nearly) independent; it is returned as is.
    """
    return float(_hsic(*_pair(K, L), unbiased=True))


def cka(K, L, unbiased: bool = False) -> float:
    """CKA of two grams (n, n); nan when a self-HSIC is exactly zero (e.g. all-zero features)."""
    K, L = _pair(K, L)
    # Tensors rather than Python floats, so that 0/0 gives nan instead of raising.
    return float(_hsic(K, L, unbiased) / torch.sqrt(_hsic(K, K, unbiased) * _hsic(L, L, unbiased)))


class MinibatchCKA:
    """Sums of per-batch HSIC terms for every pair of layers (Nguyen et al. 2021).

    ``update`` takes the stacked grams (La, b, b) of model A and (Lb, b, b) of model B on the *same*
    b images (``grams_b=None``: B is A), in any float precision (they are converted to float64 and
    not modified); ``cka()`` returns the (La, Lb) matrix
    sum_b HSIC(K_i, L_j) / sqrt(sum_b HSIC(K_i, K_i) * sum_b HSIC(L_j, L_j)).
    """

    def __init__(self, unbiased: bool = True):
        self.unbiased = unbiased
        self.batches = 0
        self.cross: torch.Tensor | None = None  # (La, Lb) sum of HSIC(K_i, L_j)
        self.self_a: torch.Tensor | None = None  # (La,) sum of HSIC(K_i, K_i)
        self.self_b: torch.Tensor | None = None  # (Lb,)
        self._buffers: list[torch.Tensor | None] = [None, None]  # float64 work space, see _buffer

    def _buffer(self, i: int, grams: torch.Tensor) -> torch.Tensor:
        # The transformed grams are formed in buffers kept from batch to batch: a fresh 16 MB
        # allocation per batch (31 layers x 256^2 x 8 bytes) costs ~4000 page faults, since glibc
        # hands large blocks back to the OS, about 20 ms here.
        buf = self._buffers[i]
        if buf is None or buf.shape != grams.shape or buf.device != grams.device:
            buf = self._buffers[i] = torch.empty(grams.shape, dtype=torch.float64, device=grams.device)
        return buf

    def update(self, grams_a: torch.Tensor, grams_b: torch.Tensor | None = None) -> None:
        if grams_b is not None and grams_a.shape[-1] != grams_b.shape[-1]:
            raise ValueError(f"grams of model A and B must come from the same images, got batches of "
                             f"{grams_a.shape[-1]} and {grams_b.shape[-1]}")
        grams_a = torch.as_tensor(grams_a)
        ta, c = _transform(grams_a, self.unbiased, self._buffer(0, grams_a))
        ta = ta.flatten(1)
        if grams_b is None:
            tb = ta
        else:
            grams_b = torch.as_tensor(grams_b)
            tb = _transform(grams_b, self.unbiased, self._buffer(1, grams_b))[0].flatten(1)
        # One matrix product gives all La x Lb inner products <T(K_i), T(L_j)>.
        cross = ta @ tb.T / c
        if grams_b is None:
            # The diagonal of the same product, so that self-CKA is 1 up to the last bit.
            self_a = self_b = cross.diagonal()
        else:
            self_a = torch.linalg.vecdot(ta, ta) / c  # no (L, b*b) temporary, unlike square().sum()
            self_b = torch.linalg.vecdot(tb, tb) / c
        if self.cross is None:
            self.cross, self.self_a, self.self_b = cross, self_a.clone(), self_b.clone()
        else:
            self.cross += cross
            self.self_a += self_a
            self.self_b += self_b
        self.batches += 1

    def cka(self) -> np.ndarray:
        if self.cross is None:
            raise ValueError("no batches were accumulated")
        return (self.cross / torch.sqrt(self.self_a[:, None] * self.self_b[None, :])).cpu().numpy()


# --- feature capture ---------------------------------------------------------------

# (name, module) pairs as conv_layers returns them, or bare modules (named from the model).
Layers = Sequence[tuple[str, nn.Module] | nn.Module]


def _named(model: nn.Module, layers: Layers | None) -> list[tuple[str, nn.Module]]:
    if layers is None:
        return conv_layers(model)
    names = {id(m): name for name, m in model.named_modules()}
    return [item if isinstance(item, tuple) else (names.get(id(item), type(item).__name__), item)
            for item in layers]


def _run_hooked(model: nn.Module, x: torch.Tensor, layers: list[tuple[str, nn.Module]],
                on_output: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
    """One forward pass in eval mode without autograd, keeping on_output(output) per layer.

    on_output runs inside the hook, before later (possibly in-place) operations can change the
    output tensor. A module called more than once in the forward keeps its FIRST call's output.
    """
    results: list[torch.Tensor | None] = [None] * len(layers)

    def hook_for(i):
        def hook(module, args, output):
            if results[i] is None:
                results[i] = on_output(output.detach())
        return hook

    forward_with_hooks(model, x, [(module, hook_for(i)) for i, (_, module) in enumerate(layers)])
    missing = [name for (name, _), r in zip(layers, results) if r is None]
    if missing:
        raise ValueError(f"layers not called in the forward pass: {', '.join(missing)}")
    return results


def capture(model: nn.Module, x: torch.Tensor, layers: Layers | None = None) -> list[torch.Tensor]:
    """Each layer's output on x, flattened to (n, -1) float64 copies (C, H, W order).

    ``layers``: (name, module) pairs or modules; default ``conv_layers(model)``. The model runs in
    eval mode under no_grad; its modes are restored and the hooks removed, also on error.
    Needs n x features x 8 bytes per layer; ``grams`` keeps only (n, n) per layer.
    """
    # copy=True: the output may alias a buffer that a later in-place op (ReLU(inplace=True)) changes.
    return _run_hooked(model, x, _named(model, layers),
                       lambda out: out.flatten(1).to(torch.float64, copy=True))


def grams(model: nn.Module, x: torch.Tensor, layers: Layers | None = None, kernel: str = "linear",
          sigma_frac: float = 0.5, rbf_median: str = "kornblith") -> torch.Tensor:
    """Stacked float64 grams (L, n, n) of each layer's output on x; same rules as ``capture``.

    ``sigma_frac`` and ``rbf_median`` set the RBF kernel's bandwidth, as in ``gram_rbf``.
    """
    _check_kernel(kernel, rbf_median)
    return _grams(model, x, _named(model, layers), kernel, sigma_frac, rbf_median).to(torch.float64)


def _grams(model, x, layers, kernel, sigma_frac, rbf_median) -> torch.Tensor:
    # Linear grams of a float32 network stay float32 here: MinibatchCKA.update converts the
    # stack to float64 in the same pass as its one copy.
    return torch.stack(_run_hooked(model, x, layers,
                                   lambda out: _gram(out, kernel, sigma_frac, rbf_median)))


def layer_depths(n: int) -> np.ndarray:
    """Normalised depth i / (n-1) of each of n layers, in [0, 1]; a single layer is at depth 0."""
    if n < 0:
        raise ValueError(f"number of layers must be >= 0, got {n}")
    return np.arange(n) / max(n - 1, 1)


# --- CKA between two networks ----------------------------------------------------------


def cka_matrix(model_a: nn.Module, model_b: nn.Module, loader: Iterable, unbiased: bool = True,
               kernel: str = "linear", device: str | torch.device = "cpu", sigma_frac: float = 0.5,
               rbf_median: str = "kornblith") -> tuple[np.ndarray, list[str], list[str]]:
    """Minibatch CKA between every conv layer of model_a (rows) and of model_b (columns).

    ``loader`` yields (x, y) batches (or bare x) of already-normalised float images in a fixed order;
    both models see each batch in the same step, which is what makes the estimator valid (a
    shuffling loader iterated once per model would compare different images). Models must already
    be on ``device``. ``model_b`` may be ``model_a`` (self-CKA): each batch then runs once.
    Unbiased HSIC (the default) needs every batch, including the last, to hold at least 4 images.
    With ``kernel="rbf"`` each batch sets its own sigma from its median distance (``sigma_frac``
    and ``rbf_median`` as in ``gram_rbf``).

    Returns the (La, Lb) CKA matrix and the layer names of each model, in depth order.
    """
    _check_kernel(kernel, rbf_median)
    same = model_b is model_a
    layers_a = conv_layers(model_a)
    layers_b = layers_a if same else conv_layers(model_b)
    acc = MinibatchCKA(unbiased)
    for batch in loader:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        x = x.to(device)
        grams_a = _grams(model_a, x, layers_a, kernel, sigma_frac, rbf_median)
        acc.update(grams_a, None if same else _grams(model_b, x, layers_b, kernel, sigma_frac, rbf_median))
    if acc.batches == 0:
        raise ValueError("the loader yielded no batches")
    return acc.cka(), [name for name, _ in layers_a], [name for name, _ in layers_b]


def cka_impact(cka_ref, cka_aug1, cka_aug2) -> np.ndarray:
    """Per-layer impact of an augmentation (DESIGN.md section 2, study 1).

    (CKA(none1, none2) - mean(CKA(none1, aug), CKA(none2, aug))) / CKA(none1, none2), elementwise.
    Arguments are per-layer arrays (layer i vs layer i) or square CKA matrices, whose diagonals are
    used. 0 means the augmented network is as similar to the references as they are to each other.
    """
    arrays = []
    for name, a in (("cka_ref", cka_ref), ("cka_aug1", cka_aug1), ("cka_aug2", cka_aug2)):
        a = np.asarray(a, dtype=np.float64)
        if a.ndim == 2 and a.shape[0] == a.shape[1]:
            a = np.diagonal(a)
        elif a.ndim != 1:
            raise ValueError(f"{name} must be per-layer values or a square CKA matrix, got shape {a.shape}")
        arrays.append(a)
    ref, aug1, aug2 = arrays
    if not ref.shape == aug1.shape == aug2.shape:
        raise ValueError(f"per-layer CKA arrays differ in length: {ref.shape}, {aug1.shape}, {aug2.shape}")
    return (ref - (aug1 + aug2) / 2) / ref
