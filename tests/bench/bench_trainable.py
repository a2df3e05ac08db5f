"""Training throughput of searchlab's epoch loop against a bare PyTorch loop.

What it measures
    Images per second of ``searchlab.train.train_epoch`` (the loop the trainable runs: shuffled
    batches, per-image flip + pad-4 crop, per-batch normalisation, per-step learning rate, loss and
    accuracy sums) against a bare PyTorch loop on the same images: the same model architecture and
    initialisation, the same batch size and SGD settings, data already in memory as one
    pre-normalised float tensor, no augmentation, no shuffling; just forward, cross_entropy,
    zero_grad, backward, step.

    searchlab hands the model channels-last batches (``normalize``), which oneDNN convolves faster
    than the contiguous NCHW batches of the bare loop; so a second bare loop on channels-last
    input is timed too, and the ratio against it is the loop's own overhead.

    The loops run in ``--repeats`` interleaved rounds (``timing.interleave``: bare, bare
    channels-last, searchlab, augmentation alone; then again) after one warmup epoch each, so that
    noise on a shared machine hits all alike. The report gives the median throughputs, the median
    of the per-round ratios with their spread, the 1-minute load average, and flags a run measured
    under load as NOT CONCLUSIVE (threshold in timing.py). The augmentation pipeline is timed on
    its own on exactly the batches of the round's searchlab epoch (same generator stream), and
    reported as a share of the searchlab step time.

How to run
    SEARCHLAB_DATA=/path/to/data python tests/bench/bench_trainable.py
    SEARCHLAB_DATA=/path/to/data python tests/bench/bench_trainable.py --images 1280 --repeats 2

    ``$SEARCHLAB_DATA/cifar10/{train,test}_{x,y}.npy`` must exist (``searchlab data prepare
    cifar10``). The script reports and exits 0; it asserts nothing. It is not collected by pytest.

Target
    searchlab train_epoch throughput >= 0.90 x the bare loop's (ratio >= 0.90).
"""
import argparse
import math
import os
import statistics

import torch
import torch.nn.functional as F

from searchlab.augment import STANDARD, Pipeline
from searchlab.config import resolve
from searchlab.data import batches, load_dataset, normalize
from searchlab.models import build_model
from searchlab.train import make_optimizer, train_epoch
from timing import interleave, timed

TARGET = 0.90
MODEL_TITLES = {"resnet20": "ResNet-20", "resnet32": "ResNet-32", "resnet56": "ResNet-56"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Training throughput of searchlab's train_epoch against a bare PyTorch loop "
                    f"(target: ratio >= {TARGET:.2f}).")
    parser.add_argument("--images", type=int, default=2560,
                        help="CIFAR-10 training images per epoch (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128, help="default: %(default)s")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved rounds of timed epochs, after one warmup epoch each "
                             "(default: %(default)s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch intra-op threads (default: os.cpu_count() = %(default)s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--model", default="resnet20", help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    args = parser.parse_args(argv)
    if args.images < 1 or args.batch_size < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--images, --batch-size, --repeats and --threads must be >= 1")
    return args


def reference_epoch(model, x, y, optimizer, batch_size):
    """The bare loop: pre-normalised float images, fixed order, no augmentation, no bookkeeping."""
    model.train()
    for start in range(0, len(x), batch_size):
        loss = F.cross_entropy(model(x[start:start + batch_size]), y[start:start + batch_size])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss.item()


def epoch_generator(device, seed, epoch):
    # As the trainable seeds each epoch.
    return torch.Generator(device).manual_seed(seed * 100_003 + epoch)


def augment_epoch(data, augment, batch_size, generator, device):
    """Seconds spent in ``augment`` alone over one epoch's batches.

    The batches are drawn first; ``batches`` draws its permutation before the first batch, so
    the generator stream (permutation, then each batch's augmentation draws) matches
    ``train_epoch``'s exactly.
    """
    drawn = list(batches(data.train, batch_size, generator))
    total = 0.0
    for x, y in drawn:
        total += timed(lambda: augment.images(x, generator), device)
    return total


def main(argv=None):
    args = parse_args(argv)
    device = args.device
    torch.set_num_threads(args.threads)

    optim = resolve({"optim": {"batch_size": args.batch_size}})["optim"]
    data = load_dataset("cifar10", val_size=0, train_size=args.images, test_size=1,
                        split_seed=args.seed).to(device)
    augment = Pipeline(STANDARD)
    bs = optim["batch_size"]
    steps = math.ceil(len(data.train) / bs)

    # Reference inputs: the same images, normalised once up front.
    ref_x = normalize(data.train.x, data.mean, data.std).contiguous()
    ref_x_cl = ref_x.contiguous(memory_format=torch.channels_last)
    ref_y = data.train.y

    def fresh_model():
        torch.manual_seed(args.seed)
        return build_model(args.model, data.num_classes, in_channels=data.train.x.shape[1]).to(device)

    ref_model = fresh_model()
    ref_optimizer = torch.optim.SGD(ref_model.parameters(), lr=optim["lr"], momentum=optim["momentum"],
                                    nesterov=optim["nesterov"], weight_decay=optim["weight_decay"])
    cl_model = fresh_model()
    cl_optimizer = torch.optim.SGD(cl_model.parameters(), lr=optim["lr"], momentum=optim["momentum"],
                                   nesterov=optim["nesterov"], weight_decay=optim["weight_decay"])
    sl_model = fresh_model()
    sl_optimizer = make_optimizer(sl_model, optim)

    def run_reference():
        reference_epoch(ref_model, ref_x, ref_y, ref_optimizer, bs)

    def run_channels_last():
        reference_epoch(cl_model, ref_x_cl, ref_y, cl_optimizer, bs)

    def run_searchlab(epoch):
        train_epoch(sl_model, data, sl_optimizer, optim, epoch, augment,
                    epoch_generator(device, args.seed, epoch))

    # The warmup runs epoch 0 of each loop, the rounds epochs 1, 2, ...; the augmentation alone
    # replays the epoch searchlab has just run and records its own time (augment calls only).
    epoch = {"searchlab": 0}
    aug_times = []

    def searchlab_epoch():
        run_searchlab(epoch["searchlab"])
        epoch["searchlab"] += 1

    def augmentation_epoch():
        done = epoch["searchlab"] - 1
        seconds = augment_epoch(data, augment, bs, epoch_generator(device, args.seed, done), device)
        if done > 0:  # not the warmup
            aug_times.append(seconds)

    timings = interleave({"bare": run_reference, "channels-last": run_channels_last,
                          "searchlab": searchlab_epoch, "augmentation": augmentation_epoch},
                         args.repeats, device=device)

    n = len(data.train)
    ref_time, cl_time, sl_time = (timings.median(name) for name in ("bare", "channels-last", "searchlab"))
    aug_time = statistics.median(aug_times)
    ref_ips, cl_ips, sl_ips = n / ref_time, n / cl_time, n / sl_time
    # Throughput ratio searchlab / bare = time ratio bare / searchlab, per round.
    ratio = timings.ratio("bare", "searchlab")
    title = MODEL_TITLES.get(args.model, args.model)
    verdict = "meets" if ratio >= TARGET else "below"
    print(f"{title}, CIFAR-10, batch {bs}, {n} images, {args.threads} threads, {args.repeats} "
          f"interleaved rounds (median), {device}")
    print(f"bare PyTorch loop      {ref_ips:7.1f} images/s   {1000 * ref_time / steps:7.1f} ms/step")
    print(f"bare, channels-last    {cl_ips:7.1f} images/s   {1000 * cl_time / steps:7.1f} ms/step")
    print(f"searchlab train_epoch  {sl_ips:7.1f} images/s   {1000 * sl_time / steps:7.1f} ms/step")
    print(timings.ratio_line("bare", "searchlab", "ratio                ", unit="")
          + f"   target >= {TARGET:.2f}: {verdict}")
    print(timings.ratio_line("channels-last", "searchlab", "ratio, channels-last ", unit="")
          + "   the loop's own overhead")
    shares = [a / s for a, s in zip(aug_times, timings.times["searchlab"])]
    print(f"augmentation           {100 * statistics.median(shares):7.1f}% of step time "
          f"({1000 * aug_time / steps:.1f} ms of {1000 * sl_time / steps:.1f} ms per step; per round "
          f"{100 * min(shares):.1f}..{100 * max(shares):.1f}%)")
    for line in timings.load_lines():
        print(line)

if __name__ == "__main__":
    main()
