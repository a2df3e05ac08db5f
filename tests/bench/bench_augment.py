"""Augmentation throughput of searchlab's batched pipeline against the usual per-image PIL pipeline.

What it measures
    Images per second of two augmentations on 256-image CIFAR-10 batches:

    (a) flip + pad-4 crop + cutout 16;
    (b) flip + pad-4 crop + RandAugment (N=2, M=9) + cutout 16.

    searchlab: ``Pipeline(specs).images(batch, generator)`` on uint8 (N, 3, 32, 32) batches gathered
    by a shuffled index from one in-memory tensor on the device, as the training loop does.

    PIL: the usual torchvision recipe, a ``Dataset`` of PIL images (made once up front) with
    ``Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(), (RandAugment(2, 9),)
    PILToTensor(), Cutout(16)])``, batched by a shuffling ``DataLoader`` with two persistent
    workers, the same two cores. A single-process loader (num_workers=0) is timed too, for
    reference. Both produce uint8 (N, 3, 32, 32) batches, so neither side pays for a float copy.
    torchvision has no cutout, and RandomErasing at a fixed 16x16 scale still places the box
    wholly inside the image, so ``Cutout`` below is written out: it clips a box around a uniformly
    random centre, as searchlab's cutout (and DeVries & Taylor's) does.

    Then the share of a training step: the time of one ResNet-20 step (batch 128, normalised
    channels-last float input, forward + cross_entropy + backward + SGD step with the trainable's
    optimiser settings) against the time of pipeline (b) on a 128-image batch, reported as
    augmentation / (augmentation + step).

    Each timing covers ``--batches`` batches (``--steps`` for the step share). Everything runs in
    ``--repeats`` interleaved rounds (``timing.interleave``: searchlab, PIL workers, PIL single
    process for (a), the same for (b), training steps, augmentation; then again), after one
    warmup pass each, so that noise on a shared machine hits all alike. The report gives the
    median throughputs, the median of the per-round ratios with their spread, the 1-minute load
    average, and flags a run measured under load as NOT CONCLUSIVE (threshold in timing.py).

How to run
    python tests/bench/bench_augment.py
    python tests/bench/bench_augment.py --batches 10 --repeats 2
    python tests/bench/bench_augment.py --data /path/to/cifar10/train_x.npy

    The script reports and exits 0; it asserts nothing. It is not collected by pytest.

Target
    (b) searchlab >= 5x the PIL pipeline with two workers; augmentation (b) <= 15% of a
    ResNet-20 training step at batch 128.
"""
import argparse
import os
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from searchlab.augment import Pipeline
from searchlab.config import resolve
from searchlab.data import channel_stats, normalize
from searchlab.models import build_model
from searchlab.train import make_optimizer
from timing import interleave

RATIO_TARGET = 5.0
SHARE_TARGET = 0.15
DEFAULT_DATA = os.path.join(os.environ.get("SEARCHLAB_DATA", "/work/shared/data"), "cifar10", "train_x.npy")

BASIC = [{"op": "flip", "p": 0.5}, {"op": "pad_crop", "padding": 4}, {"op": "cutout", "size": 16}]
# RandAugment after the geometric basics and before cutout, the order of the PIL Compose below.
RANDAUGMENT = [{"op": "flip", "p": 0.5}, {"op": "pad_crop", "padding": 4},
               {"op": "randaugment", "n": 2, "m": 9}, {"op": "cutout", "size": 16}]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Augmentation throughput of searchlab's batched pipeline against torchvision's "
                    f"per-image PIL pipeline (target: RandAugment ratio >= {RATIO_TARGET:g}x, "
                    f"<= {100 * SHARE_TARGET:g}% of a ResNet-20 step).")
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help="CIFAR-10 training images, uint8 (N, 32, 32, 3) .npy (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=256, help="default: %(default)s")
    parser.add_argument("--batches", type=int, default=20,
                        help="batches per timing (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved rounds, after one warmup each (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch intra-op threads of the main process (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2,
                        help="DataLoader workers of the PIL pipeline (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda, for searchlab and the model "
                                                        "(default: %(default)s)")
    parser.add_argument("--step-batch-size", type=int, default=128,
                        help="batch size of the training-step comparison (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=10,
                        help="training steps (and augmented batches) per timing (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    args = parser.parse_args(argv)
    if min(args.batch_size, args.batches, args.repeats, args.threads, args.workers,
           args.step_batch_size, args.steps) < 1:
        parser.error("sizes, counts, --threads and --workers must be >= 1")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but CUDA is not available")
    return args


# ------------------------------------------------------------------------------------------------
# The per-image PIL pipeline
# ------------------------------------------------------------------------------------------------

class Cutout:
    """One ``size`` x ``size`` zero square per uint8 (C, H, W) tensor, at a uniformly random centre
    pixel and clipped at the border: the reference cutout, and what searchlab's ``cutout`` does."""

    def __init__(self, size):
        self.size = size

    def __call__(self, img):
        _, h, w = img.shape
        # Python's random is reseeded per DataLoader worker, and is cheaper per call than torch's.
        cy, cx = random.randrange(h), random.randrange(w)
        y0, x0 = max(cy - self.size // 2, 0), max(cx - self.size // 2, 0)
        y1, x1 = min(cy - self.size // 2 + self.size, h), min(cx - self.size // 2 + self.size, w)
        img = img.clone()
        img[:, y0:y1, x0:x1] = 0
        return img


class PILImages(Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def pil_transform(randaugment):
    return transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        *([transforms.RandAugment(num_ops=2, magnitude=9)] if randaugment else []),
        transforms.PILToTensor(),
        Cutout(16),
    ])


def drain(loader):
    for _ in loader:
        pass


# ------------------------------------------------------------------------------------------------
# searchlab
# ------------------------------------------------------------------------------------------------

def searchlab_pass(pipeline, x, batch_size, generator, device):
    """One shuffled pass over ``x`` (on ``device``) in batches, augmenting each."""
    order = torch.randperm(len(x), generator=generator, device=generator.device).to(device)
    for start in range(0, len(x), batch_size):
        pipeline.images(x[order[start:start + batch_size]], generator)


def main(argv=None):
    args = parse_args(argv)
    device = args.device
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    n = args.batch_size * args.batches
    hwc = np.load(args.data, mmap_mode="r")
    if len(hwc) < max(n, args.step_batch_size):
        raise SystemExit(f"{args.data} holds {len(hwc)} images; --batch-size x --batches needs {n}")
    hwc = np.array(hwc[:n])  # a writable in-memory copy, not a view of the memory map
    labels = torch.zeros(n, dtype=torch.long)  # labels play no part in the augmentation's cost
    x = torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous().to(device)
    pil_images = [Image.fromarray(img) for img in hwc]
    generator = torch.Generator(device).manual_seed(args.seed)

    # --- throughput: searchlab, PIL with workers, PIL in one process; (a) and (b) ---------------
    runs = {}
    for key, specs, randaugment in (("a", BASIC, False), ("b", RANDAUGMENT, True)):
        pipeline = Pipeline(specs)
        dataset = PILImages(pil_images, labels, pil_transform(randaugment))
        # Persistent workers wait idle on their queues between epochs (the other pipeline's, too);
        # the warmup starts them, so their start-up is not timed.
        workers = DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                             num_workers=args.workers, persistent_workers=True)
        single = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=0)
        runs[f"searchlab {key}"] = (lambda pipeline=pipeline:
                                    searchlab_pass(pipeline, x, args.batch_size, generator, device))
        runs[f"workers {key}"] = lambda workers=workers: drain(workers)
        runs[f"single {key}"] = lambda single=single: drain(single)

    # --- share of a training step ---------------------------------------------------------------
    optim = resolve({"optim": {"batch_size": args.step_batch_size}})["optim"]
    mean, std = (t.to(device) for t in channel_stats(x.cpu()))
    torch.manual_seed(args.seed)
    model = build_model("resnet20", 10).to(device)
    optimizer = make_optimizer(model, optim)
    bs = args.step_batch_size
    step_x, step_y = x[:bs], torch.randint(0, 10, (bs,), device=device)
    augment = Pipeline(RANDAUGMENT)

    def train_steps():
        model.train()
        for _ in range(args.steps):
            loss = F.cross_entropy(model(normalize(step_x, mean, std)), step_y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def augment_batches():
        for i in range(args.steps):
            start = (i * bs) % (n - bs + 1)
            augment.images(x[start:start + bs], generator)

    runs["step"] = train_steps
    runs["augmentation"] = augment_batches
    timings = interleave(runs, args.repeats, device=device)

    # --- report ---------------------------------------------------------------------------------
    def ips(name):
        return n / timings.median(name)

    # OpenMP's wait policy decides whether a thread idling between parallel regions spins or
    # sleeps; with other processes on the same cores it changes small-op timings many times over.
    print(f"CIFAR-10, {args.batch_size}-image batches x {args.batches}, {args.threads} threads, "
          f"{args.repeats} interleaved rounds (median), {device}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    print(f"{'':25}{'searchlab':>13}   {f'PIL x{args.workers} workers':>16}   {'PIL 1 process':>13}   "
          f"ratio (vs workers; per round)")
    titles = {"a": "(a) flip+crop+cutout", "b": "(b) RandAugment+(a)"}
    for key, title in titles.items():
        ratio = timings.ratio(f"workers {key}", f"searchlab {key}")
        note = (f"   target >= {RATIO_TARGET:g}x: {'meets' if ratio >= RATIO_TARGET else 'below'}"
                if key == "b" else "")
        print(f"{title:25}{ips(f'searchlab {key}'):7.0f} img/s   {ips(f'workers {key}'):10.0f} img/s"
              f"   {ips(f'single {key}'):7.0f} img/s   {ratio:6.1f}x "
              f"({timings.spread(f'workers {key}', f'searchlab {key}')}){note}")
    # augmentation / (augmentation + step) = r / (1 + r) with r = aug / step per round; it grows
    # with r, so the share at the median ratio is the median share.
    shares = [r / (1 + r) for r in timings.ratios("augmentation", "step")]
    r = timings.ratio("augmentation", "step")
    share = r / (1 + r)
    step, aug = timings.median("step") / args.steps, timings.median("augmentation") / args.steps
    print(f"ResNet-20 step (batch {bs}): {1000 * step:.0f} ms; augmentation (b): {1000 * aug:.1f} ms "
          f"= {100 * share:.1f}% of the step (per round {100 * min(shares):.1f}..{100 * max(shares):.1f}%; "
          f"target <= {100 * SHARE_TARGET:g}%: {'meets' if share <= SHARE_TARGET else 'above'})")
    for line in timings.load_lines():
        print(line)

if __name__ == "__main__":
    main()
