"""All-pairs CKA of searchlab's ``cka_matrix`` against the ``torch-cka`` package.

What it measures
    Minibatch CKA (Nguyen et al. 2021: unbiased HSIC summed over batches of the same images, the
    ratio taken at the end) between every conv layer of two ResNet-32 networks with different
    random initialisations (31 x 31 layer pairs), on the first ``--images`` CIFAR-10 validation
    images in a fixed order, batches of ``--batch-size``; a trailing partial batch is dropped on
    both sides, as the CKA study does.

    searchlab: ``cka_matrix(model_a, model_b, loader, unbiased=True)`` on the loader the CKA study
    builds (a list of normalised, channels-last batches). torch-cka: ``CKA(model_a, model_b,
    model1_layers=..., model2_layers=...)``, ``.compare(loader, loader)`` and ``.export()`` on one
    unshuffled ``DataLoader`` over the same normalised images (its collate hands the models
    contiguous NCHW batches). torch-cka gets fresh deep copies of the two models for every run,
    because it leaves its forward hooks registered for good: a second run on the same models would
    hook every layer twice.

    Both are timed end to end, forward passes included, interleaved with each other and with the
    forward passes alone (``timing.interleave``: torch-cka, searchlab, forward, torch-cka, ...),
    ``--pairs`` rounds (default 3: torch-cka takes a minute or more per run). The forward passes
    alone run exactly as cka_matrix runs them (both models per batch, eval mode, the same grad
    mode, the same channels-last batches, one after the other), without hooks or grams: they are
    the part of either time that no CKA code can remove. The report gives the median of the
    per-round ratios torch-cka / searchlab and searchlab / forward with their spread, the 1-minute
    load average, and flags a run measured under load as NOT CONCLUSIVE (threshold in timing.py).
    A warmup round runs searchlab and the forward passes once first; torch-cka, too slow to run
    for nothing, is not warmed up (its first call pays oneDNN's setup, well under 1% of it).

    What bounds searchlab's time: per batch and model, the forward pass and one gram per conv
    layer. The report counts both in multiply-adds: the grams' symmetric halves over the forward
    pass's convolutions is the ratio searchlab / forward that even a perfect symmetric product
    (BLAS syrk) would leave at equal arithmetic rates.

How torch-cka 0.21 differs (read from its source)
    - It computes the same estimator: with zeroed gram diagonals, tr(KL) + 1'K1 1'L1/((n-1)(n-2))
      - 2 1'KL1/(n-2), over n(n-3), which is the unbiased HSIC of Song et al. (2012); per-batch
      terms are averaged rather than summed, which cancels in the ratio. No epsilon, no clamping.
    - But in float32: the grams, the products K @ L and the three terms, which are each far larger
      than their sum and cancel. That loss of precision is what separates its matrix from
      searchlab's float64 one. To check that this is the whole story, the report also gives the
      largest difference between searchlab and torch-cka's formula evaluated in float64 on the same
      batches (untimed); it should be at rounding level.
    - Its cost: for every batch it recomputes each layer gram of model 2 once per layer of model 1
      (La x Lb grams of b x features instead of La + Lb), forms the b x b products K @ L and L @ L
      per pair, syncs to Python per HSIC term (``.item()``), and runs without ``no_grad``.
    - Its rows follow the order in which hooks fire (execution order, like ``conv_layers``), while
      ``export()["model1_layers"]`` lists names in registration order; a module called twice
      keeps its last output there, its first in searchlab. Neither matters for ResNet-32, whose
      31 convs each run once in registration order; the report says so if they differ.

How to run
    pip install torch-cka    # into the benchmark's environment only; not a searchlab dependency
    SEARCHLAB_DATA=/path/to/data python tests/bench/bench_cka.py
    SEARCHLAB_DATA=/path/to/data python tests/bench/bench_cka.py --pairs 5
    SEARCHLAB_DATA=/path/to/data python tests/bench/bench_cka.py --no-torch-cka --pairs 9

    ``$SEARCHLAB_DATA/cifar10/{train,test}_{x,y}.npy`` must exist (``searchlab data prepare
    cifar10``). Without torch-cka installed (or with ``--no-torch-cka``) it times searchlab
    against the forward passes only. It reports and exits 0; it asserts nothing. It is not
    collected by pytest. Wait a minute or two after other heavy work (or a previous run) before
    starting it: the load average decays slowly and a high one flags the run as not conclusive.

Targets (on a quiet machine)
    torch-cka time / searchlab time >= 10;
    searchlab time / forward passes alone <= 1.4.
"""
import argparse
import copy
import functools

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from searchlab.analysis.cka import cka_matrix, grams
from searchlab.data import Split, batches, load_dataset, normalize
from searchlab.models import build_model, conv_layers
from timing import interleave

TARGET = 10.0  # torch-cka time / searchlab time
FORWARD_GOAL = 1.4  # searchlab time / forward passes alone
MODEL_TITLES = {"resnet20": "ResNet-20", "resnet32": "ResNet-32", "resnet56": "ResNet-56"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="All-pairs conv-layer CKA of two networks: searchlab's cka_matrix against "
                    f"torch-cka (target: torch-cka time / searchlab time >= {TARGET:.0f}) and against "
                    f"the forward passes alone (goal: <= {FORWARD_GOAL}x).")
    parser.add_argument("--images", type=int, default=2048,
                        help="CIFAR-10 validation images (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=256, help="default: %(default)s")
    parser.add_argument("--pairs", type=int, default=3,
                        help="interleaved rounds (torch-cka, searchlab, forward passes) "
                             "(default: %(default)s)")
    parser.add_argument("--no-torch-cka", action="store_true",
                        help="time searchlab against the forward passes only (minutes faster)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch intra-op threads (default: %(default)s)")
    parser.add_argument("--model", default="resnet32", help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0,
                        help="model A is initialised with this seed, model B with seed + 1, and the "
                             "validation split is drawn with it (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.batch_size < 4:
        parser.error("--batch-size must be >= 4 (unbiased HSIC needs 4 images per batch)")
    if args.images < args.batch_size or args.threads < 1 or args.pairs < 1:
        parser.error("--images must be >= --batch-size, --threads and --pairs >= 1")
    return args


def forward_only(models, loader):
    """Both models over every batch as cka_matrix runs them (searchlab.models.forward_with_hooks:
    eval mode, no_grad, model A then model B per batch), without hooks or grams."""
    modes = [m.training for m in models]
    try:
        with torch.no_grad():
            for model in models:
                model.eval()
            for x, _ in loader:
                for model in models:
                    model(x)
    finally:
        for model, mode in zip(models, modes):
            model.train(mode)


def multiply_adds(model, x):
    """(multiply-adds of the model's convolutions, features per conv output) for one batch x."""
    convs, features = [], []

    def count(module, args, output):
        per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        convs.append(output.numel() * per_output)
        features.append(output[0].numel())

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return sum(convs), features


def float64_reference(model_a, model_b, loader):
    """torch-cka's HSIC formula, term for term, in float64 on searchlab's grams (untimed check).

    If searchlab and this agree to rounding while torch-cka does not, the gap is float32 precision
    in torch-cka and not a difference of estimator.
    """
    layers_a, layers_b = conv_layers(model_a), conv_layers(model_b)
    cross = self_a = self_b = None
    for x, _ in loader:
        K, L = grams(model_a, x, layers_a), grams(model_b, x, layers_b)  # float64 (La|Lb, n, n)
        n = K.shape[-1]
        K.diagonal(dim1=-2, dim2=-1).zero_()
        L.diagonal(dim1=-2, dim2=-1).zero_()

        def hsic(A, B):
            # tr(A B) + 1'A1 1'B1 / ((n-1)(n-2)) - 2 1'AB1 / (n-2), over n(n-3); A, B symmetric.
            trace = A.flatten(1) @ B.flatten(1).T
            sums = A.sum((1, 2))[:, None] * B.sum((1, 2))[None, :]
            rows = A.sum(2) @ B.sum(1).T
            return (trace + sums / ((n - 1) * (n - 2)) - 2 * rows / (n - 2)) / (n * (n - 3))

        terms = hsic(K, L), hsic(K, K).diagonal(), hsic(L, L).diagonal()
        if cross is None:
            cross, self_a, self_b = terms
        else:
            cross, self_a, self_b = cross + terms[0], self_a + terms[1], self_b + terms[2]
    return (cross / torch.sqrt(self_a[:, None] * self_b[None, :])).numpy()


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    title = MODEL_TITLES.get(args.model, args.model)

    n = args.images - args.images % args.batch_size  # unbiased HSIC: whole batches only
    data = load_dataset("cifar10", val_size=n, test_size=1, split_seed=args.seed)
    val = Split(data.val.x[:n], data.val.y[:n])
    # The loader the CKA study builds: normalised channels-last batches in a fixed order.
    loader = [(normalize(x, data.mean, data.std), y) for x, y in batches(val, args.batch_size)]

    def seeded_model(seed):
        torch.manual_seed(seed)
        return build_model(args.model, data.num_classes, in_channels=val.x.shape[1])

    model_a, model_b = seeded_model(args.seed), seeded_model(args.seed + 1)
    names_a = [name for name, _ in conv_layers(model_a)]
    names_b = [name for name, _ in conv_layers(model_b)]

    torch_cka = None
    if not args.no_torch_cka:
        try:
            import torch_cka
        except ImportError:
            print("torch-cka not installed: `pip install torch-cka` into this environment (not a "
                  "searchlab dependency) to compare against it; timing searchlab against the "
                  "forward passes only")

    runs = {}
    if torch_cka is not None:
        # Same images, same order, as a plain unshuffled DataLoader over the normalised tensor.
        x_all = torch.cat([x for x, _ in loader])
        y_all = torch.cat([y for _, y in loader])
        ref_loader = DataLoader(TensorDataset(x_all, y_all), batch_size=args.batch_size, shuffle=False)
        # Its progress bar would only clutter the report; tqdm is still what it iterates through.
        torch_cka.cka.tqdm = functools.partial(torch_cka.cka.tqdm, disable=True)

        def run_torch_cka():
            # Fresh copies each run: torch-cka never removes its hooks, so a second CKA object on
            # the same models would add a second set (and keep them off the pair searchlab uses).
            cka = torch_cka.CKA(copy.deepcopy(model_a), copy.deepcopy(model_b),
                                model1_name=f"{title} A", model2_name=f"{title} B",
                                model1_layers=names_a, model2_layers=names_b, device="cpu")
            cka.compare(ref_loader, ref_loader)
            return cka.export()

        runs["torch-cka"] = run_torch_cka
    runs["searchlab"] = lambda: cka_matrix(model_a, model_b, loader, unbiased=True)[0]
    runs["forward"] = lambda: forward_only([model_a, model_b], loader)
    timings = interleave(runs, args.pairs, warmup=("searchlab", "forward"))

    # --- report ---------------------------------------------------------------------------------
    print(f"{title} x 2 (seeds {args.seed}, {args.seed + 1}, random init), "
          f"{len(names_a)} x {len(names_b)} conv layers, CIFAR-10 val, {n} images, "
          f"batch {args.batch_size}, {args.threads} threads, cpu")
    print(f"{'forward passes alone':26}{timings.median('forward'):8.2f} s   (median of {timings.rounds})")
    print(f"{'searchlab cka_matrix':26}{timings.median('searchlab'):8.2f} s")
    if torch_cka is not None:
        print(f"{'torch-cka ' + torch_cka.__version__:26}{timings.median('torch-cka'):8.2f} s")
        ratio = timings.ratio("torch-cka", "searchlab")
        # Three decimals, so that a ratio just below the target does not print as the target.
        print(timings.ratio_line("torch-cka", "searchlab", f"{'torch-cka / searchlab':25}", digits=3)
              + f"   target >= {TARGET:.0f}x: {'meets' if ratio >= TARGET else 'below'}")
    ratio = timings.ratio("searchlab", "forward")
    print(timings.ratio_line("searchlab", "forward", f"{'searchlab / forward':25}", digits=3)
          + f"   goal <= {FORWARD_GOAL}x: {'meets' if ratio <= FORWARD_GOAL else 'above'}")
    forward_macs, features = multiply_adds(model_a, loader[0][0])
    b = args.batch_size
    full, half = b * b * sum(features), b * (b + 1) // 2 * sum(features)
    print(f"multiply-adds per batch and model: convolutions {forward_macs / 1e9:.1f} G, grams "
          f"{full / 1e9:.1f} G as full products, {half / 1e9:.1f} G for their symmetric halves: "
          f"searchlab / forward >= {1 + half / forward_macs:.2f}x at equal rates")
    for line in timings.load_lines():
        print(line)

    if torch_cka is None:
        return
    sl_matrix = timings.results["searchlab"]
    exported = timings.results["torch-cka"]
    tc_matrix = exported["CKA"].detach().double().numpy()
    diff = np.abs(tc_matrix - sl_matrix)
    i, j = np.unravel_index(np.nanargmax(diff), diff.shape)
    print(f"max |CKA difference|   {np.nanmax(diff):.3e}   at ({names_a[i]}, {names_b[j]}): "
          f"searchlab {sl_matrix[i, j]:.6f}, torch-cka {tc_matrix[i, j]:.6f}; "
          f"median {np.nanmedian(diff):.1e}")
    f64 = float64_reference(model_a, model_b, loader)
    print(f"  vs torch-cka's formula in float64   {np.nanmax(np.abs(f64 - sl_matrix)):.3e}   "
          f"(same estimator; the rest is torch-cka's float32)")
    if exported["model1_layers"] != names_a or exported["model2_layers"] != names_b:
        print("  note: torch-cka lists its layers in registration order, which differs from the "
              "execution order of its rows here")


if __name__ == "__main__":
    main()
