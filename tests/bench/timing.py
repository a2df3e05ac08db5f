"""Wall-clock timing shared by the benchmarks (run as scripts, so this imports as ``timing``)."""
import time

import torch


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    """Wall-clock seconds of ``fn()``, with the device's queue drained before and after."""
    synchronize(device)
    began = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - began
