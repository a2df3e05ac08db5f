"""Epoch time of ``train_epoch`` under each option of the ``speed`` config group, against float32.

What it measures
    Seconds per training epoch (standard augmentation, ResNet-20, CIFAR-10 images) of the plain
    float32 loop and of each option alone: ``amp`` bf16 and fp16 (fp16 with its GradScaler),
    ``channels_last`` weights, ``compile`` (inductor by default). Every variant starts from the
    same weights; they run in interleaved rounds (``timing.interleave``) after one untimed warmup
    epoch each, which for ``compile`` includes its compilation (reported separately, as it is paid
    once per trial). It prints each variant's time over float32's: below 1 is faster.

    These options are for GPUs: on a CPU, bf16 is fast only with AVX512-BF16 or AMX, fp16 autocast
    is emulated, and channels-last batches are what ``data.normalize`` already makes, so the CPU
    numbers say only that the options run, and what they cost here.

How to run
    SEARCHLAB_DATA=/path/to/data python tests/bench/bench_speed.py
    SEARCHLAB_DATA=/path/to/data python tests/bench/bench_speed.py --images 512 --repeats 2 --device cuda
    ... --backend aot_eager   (compile without code generation: its overhead alone)

    It reports and exits 0; it asserts nothing. It is not collected by pytest.
"""
import argparse
import copy
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import timing  # noqa: E402

from searchlab.augment import Pipeline  # noqa: E402
from searchlab.config import resolve  # noqa: E402
from searchlab.data import load_dataset  # noqa: E402
from searchlab.models import build_model  # noqa: E402
from searchlab.train import make_optimizer, make_scaler, prepare_model, train_epoch  # noqa: E402

VARIANTS = {  # name -> the speed group
    "float32": {},
    "bf16": {"amp": "bf16"},
    "fp16": {"amp": "fp16"},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend of the compile variant")
    args = parser.parse_args()

    data = load_dataset("cifar10", train_size=args.images, val_size=0.1, test_size=1).to(args.device)
    torch.manual_seed(0)
    initial = build_model(args.model, data.num_classes)
    runs, compile_seconds = {}, {}
    for name, speed in VARIANTS.items():
        cfg = resolve({"optim": {"batch_size": 128}, "speed": {**speed, **({"compile_backend": args.backend}
                                                                             if "compile" in speed else {})}})
        model = prepare_model(copy.deepcopy(initial), cfg).to(args.device)
        optimizer, optim = make_optimizer(model, cfg["optim"]), cfg["optim"]
        scaler = make_scaler(cfg["speed"]["amp"], torch.device(args.device).type)

        def epoch(model=model, optimizer=optimizer, optim=optim, scaler=scaler, amp=cfg["speed"]["amp"]):
            generator = torch.Generator(args.device).manual_seed(0)
            return train_epoch(model, data, optimizer, optim, 0, Pipeline("standard"), generator,
                               amp=amp, scaler=scaler)[0]

        if name == "compile":  # the first epoch compiles: timed on its own
            began = time.perf_counter()
            epoch()
            compile_seconds[name] = time.perf_counter() - began
        runs[name] = epoch
    result = timing.interleave(runs, args.repeats, warmup=[n for n in runs if n != "compile"], device=args.device)
    print(f"{args.model}, {args.images} CIFAR-10 images, batch 128, {args.device}, "
          f"{torch.get_num_threads()} threads; compile backend {args.backend}")
    print(f"float32 epoch {result.median('float32'):.2f} s; first compiled epoch {compile_seconds['compile']:.1f} s "
          f"(compilation included)")
    for name in VARIANTS:
        if name != "float32":
            print(result.ratio_line(name, "float32", f"{name + '/float32':24s}"))
    for name in VARIANTS:
        print(f"  last train loss {name:14s} {result.results[name]:.4f}")
    for line in result.load_lines():
        print(line)


if __name__ == "__main__":
    main()
