"""Deep AutoAugment's two kinds of Tune trial: pretraining the proxy, and searching one policy layer.

``deepaa_pretrain(config)`` trains the proxy network epoch by epoch (``deepaa.pretrain_epoch``) and
leaves it in a cache shared by every search with the same data, proxy recipe and seed; a second
search finds it there and trains nothing. ``deepaa_layer(config)`` loads that proxy and searches
layer ``deepaa.layer`` given the frozen earlier layers (``deepaa.frozen``, their probabilities),
reporting every ``deepaa.report_every`` steps (reports numbered by ``epoch``) with a checkpoint of
the layer's state (logits, Adam, step, generator), so that it resumes mid-layer. Its last report
carries the layer's ``logits``, which ``DeepAASearcher`` reads to suggest the next layer.

Both take a config of the groups in ``DEFAULTS`` (checked as the training config is); the sweep
dispatches to them by the trial config's ``kind`` (``sweep.TRAINABLES``).
"""
import hashlib
import json
import os
import tempfile
import time
from dataclasses import fields

import torch
from ray import tune

from searchlab import checkpoint, deepaa
from searchlab.config import merge
from searchlab.data import load_dataset, require
from searchlab.errors import UserError
from searchlab.models import MODELS, build_model
from searchlab.train import evaluate
from searchlab.trainable import latest_state, pick_device, record_trial, seed_everything, trial_cpus

DEFAULTS = {
    # Their pools: 10,000 validation images, the first 5,000 of the rest pretrain the proxy, the
    # others give each search point its training image (deepaa.search_pools).
    "data": {"dataset": "cifar10", "val_size": 10000, "train_size": None, "split_seed": 0, "root": None},
    "proxy": {
        "model": "wrn40_2",
        "pretrain_size": deepaa.PRETRAIN_SIZE,
        "epochs": deepaa.PRETRAIN["epochs"],
        "batch_size": deepaa.PRETRAIN["batch_size"],
        "lr": deepaa.PRETRAIN["lr"],
        "seed": 0,
        "cache": None,          # folder of pretrained proxies; None: deepaa_proxies/ beside the experiments
    },
    "deepaa": {
        "layer": 1,             # the layer this trial searches (1..K)
        "frozen": [],           # the probabilities of layers 1..layer-1 [layer - 1][139]
        **{f.name: f.default for f in fields(deepaa.Settings) if f.name != "betas"},
        "report_every": 16,     # steps between reports (each with a checkpoint)
    },
    "label": None,              # the trial's name in the study (e.g. "deepaa-s0/layer2")
    "seed": 0,                  # seeds this layer's search (its points and samples)
    "device": "auto",
    "threads": None,
}
IDENTITY = deepaa.Space().names.index("Identity")


def resolve(config):
    """DEFAULTS updated with ``config``; UserError on an unknown key, model, dataset or setting."""
    cfg = merge(DEFAULTS, config)
    if cfg["proxy"]["model"] not in MODELS:
        raise UserError(f"unknown proxy.model {cfg['proxy']['model']!r}; valid: {', '.join(MODELS)}")
    search = cfg["deepaa"]
    if not isinstance(search["layer"], int) or search["layer"] < 1:
        raise UserError(f"deepaa.layer must be a layer number >= 1, got {search['layer']!r}")
    if len(search["frozen"]) != search["layer"] - 1:
        raise UserError(f"deepaa.frozen must hold the {search['layer'] - 1} layer(s) before layer "
                        f"{search['layer']}, got {len(search['frozen'])}")
    if not isinstance(search["report_every"], int) or search["report_every"] < 1:
        raise UserError(f"deepaa.report_every must be a number of steps >= 1, got {search['report_every']!r}")
    try:
        settings(cfg)
    except ValueError as e:
        raise UserError(str(e)) from e
    return cfg


def settings(cfg):
    keys = {f.name for f in fields(deepaa.Settings)}
    return deepaa.Settings(**{k: v for k, v in cfg["deepaa"].items() if k in keys})


def pretrain_metrics(cfg):
    return ["epoch", "train_loss", "epoch_time", "device_hours"], ["proxy_val_acc", "cached"]


def layer_metrics(cfg):
    every = ["epoch", "layer", "step", "cos_before", "cos_before_std", "cos_after", "reward_mean",
             "reward_std", "entropy", "identity_prob", "top5", "step_time", "device_hours"]
    return every, ["logits"]


def pretrain_epochs(cfg):
    return cfg["proxy"]["epochs"]


def reports(cfg):
    """Reports a layer trial makes (the time attribute of a scheduler over layer trials)."""
    return -(-cfg["deepaa"]["steps"] // cfg["deepaa"]["report_every"])


# ---- pretraining -----------------------------------------------------------------------------

def deepaa_pretrain(config):
    cfg = resolve(config)
    device, data = _setup(cfg)
    pools = _pools(cfg, data)
    record_trial(cfg, pretrain_epochs(cfg))
    path = proxy_path(cfg)
    state, unlogged = latest_state()
    if state is None and os.path.exists(path):  # trained by an earlier search with the same data, recipe and seed
        tune.report({"epoch": cfg["proxy"]["epochs"], "train_loss": float("nan"), "epoch_time": 0.0,
                     "device_hours": 0.0,
                     "proxy_val_acc": torch.load(path, weights_only=True)["val_acc"], "cached": True})
        return
    proxy = cfg["proxy"]
    optim = {**deepaa.PRETRAIN, "epochs": proxy["epochs"], "batch_size": proxy["batch_size"], "lr": proxy["lr"]}
    model = build_model(proxy["model"], data.num_classes).to(device)
    optimizer = deepaa.pretrain_optimizer(model, optim)
    history = []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = state["history"]
        for metrics in history:
            if metrics["epoch"] in unlogged:
                tune.report(metrics)
    devices = _devices(device)
    for epoch in range(len(history), proxy["epochs"]):
        began = time.perf_counter()
        generator = torch.Generator(device).manual_seed(proxy["seed"] * 100_003 + epoch)
        loss = deepaa.pretrain_epoch(model, pools.pretrain, optimizer, epoch, generator, pools.mean, pools.std, optim)
        elapsed = time.perf_counter() - began
        seconds = elapsed + sum(m["epoch_time"] for m in history)
        metrics = {"epoch": epoch + 1, "train_loss": loss, "epoch_time": elapsed,
                   "device_hours": seconds * devices / 3600}
        if epoch + 1 == proxy["epochs"]:
            # Accuracy on the validation pool: how good a proxy the search gets.
            _, metrics["proxy_val_acc"] = evaluate(model, pools.val, pools.mean, pools.std)
            metrics["cached"] = False
            _save_proxy(path, model, pools, metrics["proxy_val_acc"])
        history.append(metrics)
        _report(epoch + 1, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": history},
                cfg, metrics)


def proxy_path(cfg):
    """Where the proxy of this data, recipe and seed is cached: one file per key, so that every
    search (and every experiment on the same storage) with that proxy shares it."""
    key = {"data": {k: v for k, v in cfg["data"].items() if k != "root"},
           "proxy": {k: v for k, v in cfg["proxy"].items() if k != "cache"}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(cfg["proxy"]["cache"] or _default_cache(), f"proxy-{cfg['proxy']['model']}-{digest}.pt")


def _default_cache():
    # Beside the experiments on the sweep's storage (Tune's view of it), else the default storage.
    try:
        from ray.train._internal.session import get_storage

        root = get_storage().storage_fs_path
    except Exception:  # outside a Tune session
        root = os.path.expanduser(os.environ.get("SEARCHLAB_RESULTS", "~/searchlab_results"))
    return os.path.join(root, "deepaa_proxies")


def _save_proxy(path, model, pools, val_acc):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), prefix=".proxy.", delete=False) as f:
        torch.save({"schema": checkpoint.SCHEMA, "model": model.state_dict(), "mean": pools.mean.cpu(),
                    "std": pools.std.cpu(), "val_acc": val_acc}, f)
    os.replace(f.name, path)


def load_proxy(cfg, num_classes, device):
    """The cached proxy of ``cfg``, frozen for the search; UserError when it was never pretrained."""
    path = proxy_path(cfg)
    if not os.path.exists(path):
        raise UserError(f"no pretrained proxy at {path}: run a deepaa_pretrain trial with the same data "
                        "and proxy groups first")
    saved = torch.load(path, map_location=device, weights_only=True)
    model = build_model(cfg["proxy"]["model"], num_classes).to(device)
    model.load_state_dict(saved["model"])
    return deepaa.freeze(model, saved["mean"], saved["std"])


# ---- one layer's search ----------------------------------------------------------------------

def deepaa_layer(config):
    cfg = resolve(config)
    device, data = _setup(cfg)
    pools = _pools(cfg, data)
    record_trial(cfg, reports(cfg))
    proxy = load_proxy(cfg, data.num_classes, device)
    space, run = deepaa.Space(), settings(cfg)
    layer_number, frozen = cfg["deepaa"]["layer"], cfg["deepaa"]["frozen"]
    # One seed per (search, layer): a layer's draws do not repeat the previous layer's.
    layer = deepaa.LayerSearch(len(space), run, seed=cfg["seed"] * 1_000 + layer_number, device=device)
    history, seconds = [], 0.0
    state, unlogged = latest_state()
    if state is not None:
        layer.load_state_dict(state["layer"])
        history, seconds = state["history"], state["seconds"]
        for metrics in history:
            if metrics["epoch"] in unlogged:
                tune.report(metrics)
    devices = _devices(device)
    while layer.step < run.steps:
        began = time.perf_counter()
        logs = deepaa.search_layer(proxy, pools, frozen, layer, space, run,
                                   until=min(layer.step + cfg["deepaa"]["report_every"], run.steps))
        elapsed = time.perf_counter() - began
        seconds += elapsed
        # "epoch" numbers the reports, as it numbers a training trial's: the unit of resume and of ASHA's rungs.
        metrics = {"epoch": len(history) + 1, **summary(logs), "identity_prob": float(layer.probs[IDENTITY]),
                   "step_time": elapsed / len(logs), "device_hours": seconds * devices / 3600}
        if layer.step == run.steps:
            metrics["logits"] = layer.logits.detach().cpu().tolist()
        history.append(metrics)
        _report(metrics["epoch"], {"layer": layer.state_dict(), "history": history, "seconds": seconds},
                cfg, metrics)


def summary(logs):
    """A report of several steps' logs: the step, layer, the means of cos and reward over the
    steps, and entropy and top 5 after the last one."""
    last = logs[-1]

    def mean(key):
        values = [log[key] for log in logs if log[key] is not None]
        return sum(values) / len(values) if values else None

    return {"layer": last["layer"], "step": last["step"],
            **{k: mean(k) for k in ("cos_before", "cos_before_std", "cos_after", "reward_mean", "reward_std")},
            "entropy": last["entropy"],
            # One string, not a list: Tune's TensorBoard logger takes lists for histograms.
            "top5": ", ".join(f"{name} {p:.3f}" for name, p in last["top5"])}


# ---- shared ----------------------------------------------------------------------------------

def _setup(cfg):
    device = pick_device(cfg["device"])
    torch.set_num_threads(cfg["threads"] or trial_cpus())
    seed_everything(cfg["seed"])
    d = cfg["data"]
    require(d["dataset"], d["root"])
    data = load_dataset(d["dataset"], val_size=d["val_size"], train_size=d["train_size"],
                        split_seed=d["split_seed"], root=d["root"]).to(device)
    return device, data


def _pools(cfg, data):
    try:
        return deepaa.search_pools(data, cfg["proxy"]["pretrain_size"])
    except ValueError as e:
        raise UserError(f"proxy.pretrain_size: {e}") from e


def _devices(device):
    """What one hour of this trial costs in device-hours: its (fraction of a) GPU on a GPU, else its CPUs."""
    if device == "cuda":
        try:
            gpus = sum(b.get("GPU", 0) for b in tune.get_context().get_trial_resources().bundles)
        except Exception:  # outside a Tune session
            gpus = 0
        return float(gpus or 1)
    return float(trial_cpus())


def _report(number, state, cfg, metrics):
    with tempfile.TemporaryDirectory() as folder:
        checkpoint.save(folder, number, state, cfg, metrics)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
