"""Split BatchNorm: what a training step and a lambda sweep cost.

    python tests/bench/bench_splitbn.py [--model wrn28_2] [--rounds 5]

1. One splitbn training step (weak + RandAugment views of a batch, one forward and backward over
   both, split BatchNorm) against two standard steps on the same images (the weak view, then the
   strong view, each its own forward, backward and optimizer step), augmentation included. Goal:
   at most 1.1x. Printed as ``splitbn step ratio N.NNx``.
2. The lambda sweep: the ``clean`` and ``corruptions`` evaluations of a split model with 5 lambdas
   against two plain forward passes over the same sets (validation, test, and every corruption and
   severity). Goal: no more than the two forward passes (1.0x, plus noise). Printed as
   ``lambda sweep ratio N.NNx``. Needs $SEARCHLAB_DATA/cifar10-c (``searchlab data corrupt cifar10``).

Both are timed in interleaved rounds (``timing.interleave``).
"""
import argparse
import copy

import numpy as np
import torch

from searchlab import corruptions, splitbn
from searchlab.augment import Pipeline
from searchlab.config import resolve
from searchlab.data import Split, batches, load_dataset, normalize
from searchlab.evals import clean, corruption_errors
from searchlab.models import build_model
from searchlab.regimes import splitbn as splitbn_regime
from searchlab.regimes import standard
from searchlab.train import make_optimizer
from timing import interleave

STEP_GOAL, SWEEP_GOAL = 1.1, 1.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4, help="training steps per timed run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=500, help="images per evaluation set (val, test, each "
                        "corruption and severity)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("step", "sweep"), help="run one of the two (the load average "
                        "the first leaves would flag the second as measured under load)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = resolve({"data": {"dataset": "cifar10", "val_size": args.images, "test_size": args.images},
                   "model": {"name": args.model}, "regime": "splitbn",
                   "corruptions": {"images": args.images}})
    data = load_dataset("cifar10", val_size=args.images, train_size=args.batch_size * args.steps,
                        test_size=args.images)
    norm = lambda x: normalize(x, data.mean, data.std)  # noqa: E731
    s = cfg["splitbn"]

    # ---- 1. a training step ------------------------------------------------------------------
    torch.manual_seed(0)
    plain = build_model(args.model, 10)
    split = splitbn.convert(copy.deepcopy(plain))
    optimizers = {"plain": make_optimizer(plain, cfg["optim"]), "split": make_optimizer(split, cfg["optim"])}
    weak, strong = Pipeline(s["main"]), Pipeline(s["aux"])

    def step(model, optimizer, regime, x, y, augment, generator, **params):
        loss, _ = regime(model, x, y, augment, generator, norm, **params)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def split_steps():
        generator = torch.Generator().manual_seed(0)
        split.train()
        for x, y in batches(data.train, args.batch_size):
            step(split, optimizers["split"], splitbn_regime, x, y, Pipeline("none"), generator,
                 **{k: v for k, v in s.items() if k != "lambda"})

    def two_standard_steps():
        generator = torch.Generator().manual_seed(0)
        plain.train()
        for x, y in batches(data.train, args.batch_size):
            step(plain, optimizers["plain"], standard, x, y, weak, generator)
            step(plain, optimizers["plain"], standard, x, y, strong, generator)

    if args.only != "sweep":
        step_benchmark(args, split_steps, two_standard_steps)
    if args.only != "step":
        sweep_benchmark(args, cfg, data, split, norm)


def step_benchmark(args, split_steps, two_standard_steps):
    steps = interleave({"two standard steps": two_standard_steps, "splitbn step": split_steps}, args.rounds)
    print(f"{args.model}, batch {args.batch_size} (+ its strong view), {args.steps} steps per run, "
          f"{args.threads} threads, {args.rounds} interleaved rounds")
    for name in steps.times:
        print(f"{name:20s} {1000 * steps.median(name) / args.steps:8.1f} ms per step")
    ratio = steps.ratio("splitbn step", "two standard steps")
    print(f"splitbn step ratio {ratio:.2f}x   (per round {steps.spread('splitbn step', 'two standard steps')}; "
          f"goal <= {STEP_GOAL}: {'met' if ratio <= STEP_GOAL else 'NOT met'})")
    for line in steps.load_lines():
        print(line)


def sweep_benchmark(args, cfg, data, split, norm):
    s = cfg["splitbn"]
    split.eval()
    images, labels = corruptions.load("cifar10")
    per_severity = len(labels) // 5
    sets = [data.val, data.test]
    for name in corruptions.CORRUPTIONS:
        for severity in range(5):
            rows = slice(severity * per_severity, severity * per_severity + args.images)
            sets.append(Split(torch.from_numpy(np.array(images[name][rows])).permute(0, 3, 1, 2),
                              torch.from_numpy(np.asarray(labels[rows], dtype=np.int64))))

    @torch.no_grad()
    def two_forward_passes():
        for split_set in sets:
            for _ in range(2):
                for x, _y in batches(split_set, cfg["corruptions"]["batch_size"]):
                    split(norm(x))

    def lambda_sweep():
        return {**clean(split, data, cfg), **corruption_errors(split, data, cfg)}

    sweep = interleave({"two forward passes": two_forward_passes, "lambda sweep": lambda_sweep}, args.rounds)
    metrics = sweep.results["lambda sweep"]
    print(f"\n{len(sets)} evaluation sets of {args.images} images (val, test, 15 corruptions x 5 severities), "
          f"lambdas {s['lambdas']}: {len(metrics)} metrics")
    for name in sweep.times:
        print(f"{name:20s} {sweep.median(name):8.2f} s")
    ratio = sweep.ratio("lambda sweep", "two forward passes")
    print(f"lambda sweep ratio {ratio:.2f}x   (per round {sweep.spread('lambda sweep', 'two forward passes')}; "
          f"goal <= {SWEEP_GOAL}: {'met' if ratio <= SWEEP_GOAL + 0.05 else 'NOT met'}, within 5% noise)")
    for line in sweep.load_lines():
        print(line)


if __name__ == "__main__":
    main()
