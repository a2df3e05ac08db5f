"""The speed group (mixed precision, channels_last, torch.compile, non-blocking copies), on the CPU.

What a GPU adds (cuDNN kernels, pinned-memory DMA) cannot run here; what these tests check holds on
any device: the numbers stay within float tolerance of float32, fp16 steps go through the
GradScaler, checkpoints of a compiled model are a plain model's, and augmentation and CKA are
unchanged by any option.
"""
import copy
import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from searchlab import augment, evals
from searchlab.analysis.cka import cka_matrix
from searchlab.augment import Pipeline
from searchlab.augment.policies import augmix
from searchlab.config import resolve
from searchlab.data import Split, load_dataset, move, normalize
from searchlab.errors import UserError
from searchlab.models import build_model
from searchlab.regimes import REGIMES
from searchlab.train import autocast, make_optimizer, make_scaler, prepare_model, train_epoch


def speed(**kw):
    return resolve({"speed": kw})


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_size=256, val_size=128, test_size=128)


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return build_model("small_cnn", 10, in_channels=1)


# ---- configuration --------------------------------------------------------------------------------

def test_defaults_change_nothing():
    assert resolve({})["speed"] == {"amp": "none", "channels_last": False, "compile": False,
                                    "compile_backend": "inductor", "non_blocking": False}


@pytest.mark.parametrize("given, message", [
    ({"amp": "fp8"}, "unknown speed.amp 'fp8'; valid: none, bf16, fp16"),
    ({"amp": True}, "unknown speed.amp True; valid: none, bf16, fp16"),
    ({"compile": True, "compile_backend": "nope"}, "unknown speed.compile_backend 'nope'; valid: .*inductor"),
    ({"channels_last": "true"}, "speed.channels_last must be true or false"),
    ({"compile": 1}, "speed.compile must be true or false"),
    ({"pin": True}, "unknown key.* pin in speed; valid: amp, channels_last, compile, compile_backend, non_blocking"),
])
def test_bad_values_name_the_valid_choices(given, message):
    with pytest.raises(UserError, match=message) as error:
        speed(**given)
    assert "\n" not in str(error.value)


# ---- mixed precision ------------------------------------------------------------------------------

# Relative tolerance on the loss of one batch against float32, from the formats' unit roundoff
# (bf16 2^-9 = 2e-3, fp16 2^-11 = 5e-4) times the few roundings that reach the loss (input,
# two convs, the linear layer, each summing over ~100 products) with room to spare: 10x the roundoff.
# An error in the autocast plumbing (wrong dtype reaching the loss, a loss computed in fp16)
# shows up far above it, and float32 would be equal to 1e-7.
ROUNDOFF = {"bf16": 2.0 ** -9, "fp16": 2.0 ** -11}


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_loss_is_close_to_float32(digits, amp):
    model = small_cnn()
    x = normalize(digits.train.x[:128], digits.mean, digits.std)
    y = digits.train.y[:128]
    reference = F.cross_entropy(model(x), y).item()
    with autocast(amp, "cpu"):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    assert logits.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]  # autocast is on
    assert loss.dtype == torch.float32 and 0 < abs(loss.item() - reference) <= 10 * ROUNDOFF[amp] * reference
    # A whole epoch trains as float32 does: the same data, init and order give a mean training loss
    # within a few percent (the trajectories drift apart by rounding, step after step).
    o = resolve({"optim": {"lr": 0.05, "batch_size": 64}})["optim"]
    losses = {}
    for precision in ("none", amp):
        model = small_cnn()
        losses[precision], _ = train_epoch(model, digits, make_optimizer(model, o), o, 0, Pipeline("standard"),
                                           torch.Generator().manual_seed(0), amp=precision)
    assert np.isfinite(losses[amp]) and losses[amp] == pytest.approx(losses["none"], rel=0.05)


def test_fp16_steps_go_through_the_grad_scaler(digits):
    o = resolve({"optim": {"lr": 0.05, "batch_size": 64}})["optim"]
    assert make_scaler("fp16", "cpu").is_enabled()
    assert not make_scaler("bf16", "cpu").is_enabled() and not make_scaler("none", "cpu").is_enabled()
    # A scale so large that the fp16 gradients overflow: every step is skipped (the weights stay as
    # they were) and the scale halves each time. A plain optimizer.step() would have moved them.
    model = small_cnn()
    before = copy.deepcopy(model.state_dict())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 100)
    train_epoch(model, digits, make_optimizer(model, o), o, 0, Pipeline([]), torch.Generator().manual_seed(0),
                amp="fp16", scaler=scaler)
    steps = len(digits.train) // o["batch_size"]
    assert scaler.get_scale() == 2.0 ** (100 - steps)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if "running" not in k
               and "num_batches" not in k)
    # At the default scale the steps are taken: the weights move, and the scaler counted each step
    # without overflow (or lowered its scale after one).
    scaler = make_scaler("fp16", "cpu")
    train_epoch(model, digits, make_optimizer(model, o), o, 0, Pipeline([]), torch.Generator().manual_seed(0),
                amp="fp16", scaler=scaler)
    assert not torch.equal(model.state_dict()["head.fc.weight"], before["head.fc.weight"])
    assert scaler.state_dict()["_growth_tracker"] == steps or scaler.get_scale() < 2.0 ** 16


# ---- channels_last --------------------------------------------------------------------------------

def test_channels_last_gives_the_same_logits():
    torch.manual_seed(0)
    model = build_model("resnet20", 10).eval()
    fast = prepare_model(copy.deepcopy(model), speed(channels_last=True)).eval()
    convs = [m.weight for m in fast.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs)
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        expected = model(x.contiguous())
        for batch in (x.contiguous(), x.contiguous(memory_format=torch.channels_last)):
            # float32 convolutions in another memory layout sum in another order: within 1e-5.
            torch.testing.assert_close(fast(batch), expected, rtol=1e-5, atol=1e-5)
    # Its state dict is the plain model's, values and keys.
    assert all(torch.equal(fast.state_dict()[k], v) for k, v in model.state_dict().items())


# ---- torch.compile --------------------------------------------------------------------------------

def compiled(model, cfg, graphs):
    """prepare_model with a backend that records the graphs it compiles and runs them as they are."""
    def recording(gm, inputs):
        graphs.append(gm)
        return gm.forward

    cfg["speed"]["compile_backend"] = recording
    return prepare_model(model, cfg)


def test_compiled_model_checkpoint_loads_into_a_plain_model(digits):
    cfg = speed(compile=True, channels_last=True, amp="bf16")
    graphs = []
    model = compiled(small_cnn(), cfg, graphs)
    o = cfg["optim"]
    train_epoch(model, digits, make_optimizer(model, o), o, 0, Pipeline("standard"), torch.Generator().manual_seed(0),
                amp="bf16")
    assert graphs  # the training step ran through torch.compile
    state = model.state_dict()
    plain = small_cnn(seed=1)
    assert list(state) == list(plain.state_dict())  # no "_orig_mod." prefixes
    # Saved and loaded as the checkpoint module does, into the model the CKA study builds.
    plain.load_state_dict(torch.load(_saved(state), weights_only=True))
    x = normalize(digits.val.x, digits.mean, digits.std)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), model.eval()(x))  # the recording backend runs the graph as traced
        assert torch.equal(copy.deepcopy(model)(x), plain(x))  # a deepcopy (evaluate_at_end) is plain
    assert copy.deepcopy(model)._compiled_call_impl is None
    # Resume: the compiled model takes the plain state dict back, strictly.
    model.load_state_dict(plain.state_dict())


def _saved(state):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.skipif(not os.environ.get("SEARCHLAB_INDUCTOR"),
                    reason="inductor compiles C++ for a minute on a busy 2-core machine; SEARCHLAB_INDUCTOR=1 runs it")
def test_inductor_logits_match_the_plain_model(digits):
    model = prepare_model(small_cnn(), speed(compile=True)).eval()
    plain = small_cnn().eval()
    x = normalize(digits.val.x, digits.mean, digits.std)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=1e-5, atol=1e-5)  # fused kernels sum in another order


def test_split_batchnorm_trains_and_evaluates_with_every_option(digits):
    cfg = resolve({"regime": "splitbn", "splitbn": {"main": "standard", "aux": "randaugment", "lambdas": [0.0, 1.0]},
                   "speed": {"amp": "bf16", "channels_last": True, "compile": True}})
    graphs = []
    model = compiled(small_cnn(), cfg, graphs)
    o = cfg["optim"]
    regime = REGIMES["splitbn"]
    params = {k: v for k, v in cfg["splitbn"].items()}
    loss, _ = train_epoch(model, digits, make_optimizer(model, o), o, 0, Pipeline([]), torch.Generator().manual_seed(0),
                          lambda *a: regime(*a, **params), amp="bf16")
    assert np.isfinite(loss) and graphs
    metrics = evals.run_evals(["clean"], model, digits, cfg)
    assert set(metrics) == set(evals.metric_names(["clean"], cfg)) and 0 <= metrics["val_acc@lam1"] <= 1
    # The plain names are those of the trial's own lambda (0: the main branch).
    assert metrics["val_acc"] == metrics["val_acc@lam0"]


# ---- exactness: augmentation on uint8, CKA and spectrum in full precision --------------------------

def test_augmentation_is_unchanged_under_autocast(amp="bf16"):
    # Today's ops are integer and elementwise float arithmetic, which autocast leaves alone; the
    # guard in Pipeline.images and augmix keeps it so for any op that would use a convolution.
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    for name in augment.PRESETS:
        expected = Pipeline(name).images(x, torch.Generator().manual_seed(1))
        with autocast(amp, "cpu"):
            got = Pipeline(name).images(x, torch.Generator().manual_seed(1))
        assert got.dtype == torch.uint8 and torch.equal(got, expected), name
    expected = augmix(x, torch.Generator().manual_seed(2))
    with autocast(amp, "cpu"):
        assert torch.equal(augmix(x, torch.Generator().manual_seed(2)), expected)


def test_cka_and_spectrum_are_unchanged_by_the_options(digits):
    a, b = small_cnn(0).eval(), small_cnn(1).eval()
    x = normalize(digits.val.x, digits.mean, digits.std)
    loader = [x[:64], x[64:128]]
    expected, names_a, names_b = cka_matrix(a, b, loader)
    # Under a caller's autocast (a trial's speed.amp) CKA is computed exactly as without: bit for bit.
    for amp in ("bf16", "fp16"):
        with autocast(amp, "cpu"):
            got, _, _ = cka_matrix(a, b, loader)
        assert np.array_equal(got, expected), amp
    # Models prepared with every option (channels_last weights, compiled) give the same CKA up to the
    # float32 summation order of channels-last convolutions.
    cfg = speed(channels_last=True, compile=True)
    fast_a, fast_b = (compiled(copy.deepcopy(m), copy.deepcopy(cfg), []) for m in (a, b))
    got, fast_names_a, fast_names_b = cka_matrix(fast_a, fast_b, [batch.contiguous() for batch in loader])
    assert (fast_names_a, fast_names_b) == (names_a, names_b)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # The spectrum (float64 covariance of float32 features) ignores speed.amp.
    plain_cfg, amp_cfg = resolve({"spectrum": {"images": 256}}), resolve({"spectrum": {"images": 256},
                                                                         "speed": {"amp": "bf16"}})
    plain = evals.EVALS["spectrum"].run(a, digits, plain_cfg)
    assert all(np.array_equal(v, plain[k]) for k, v in evals.EVALS["spectrum"].run(a, digits, amp_cfg).items())


def test_evaluation_under_amp_reports_float32_losses(digits):
    model = small_cnn().eval()
    plain = evals.run_evals(["clean"], model, digits, resolve({}))
    fast = evals.run_evals(["clean"], model, digits, resolve({"speed": {"amp": "bf16"}}))
    predict = evals.predictor(model, resolve({"speed": {"amp": "bf16"}}))
    assert predict(normalize(digits.val.x[:8], digits.mean, digits.std))[""].dtype == torch.float32
    assert fast["val_loss"] != plain["val_loss"]  # the forward pass did run in bf16
    assert fast["val_loss"] == pytest.approx(plain["val_loss"], rel=10 * ROUNDOFF["bf16"])


# ---- non-blocking copies --------------------------------------------------------------------------

def test_non_blocking_moves_are_plain_copies_off_the_gpu():
    split = Split(torch.arange(24, dtype=torch.uint8).view(2, 3, 2, 2), torch.tensor([0, 1]))
    moved = split.to("cpu", non_blocking=True)
    assert torch.equal(moved.x, split.x) and torch.equal(moved.y, split.y)
    t = torch.randn(3)
    assert move(t, "cpu", non_blocking=True) is t  # already there: no copy, and no pinning without CUDA


# ---- a trial with every option ---------------------------------------------------------------------

SPACE = '''
def space(epochs: int = 2):
    return {
        "param_space": {
            "data": {"dataset": "digits", "val_size": 128, "test_size": 128},
            "model": {"name": "small_cnn"},
            "optim": {"lr": 0.1, "batch_size": 64, "epochs": epochs},
            "augment": {"pipeline": "none"},
            "eval": {"every_epoch": ["clean"], "at_end": ["train_clean", "spectrum"]},
            "train_clean": {"images": 256}, "spectrum": {"images": 256},
            "speed": {"amp": "fp16", "channels_last": True, "compile": True, "compile_backend": "aot_eager",
                      "non_blocking": True},
        },
        "searcher": "grid",
        "resources": {"cpu": 1},
    }
'''


def test_a_trial_with_every_option_completes_and_its_checkpoint_is_a_plain_models(ray_session, tmp_path):
    from searchlab import checkpoint, sweep
    from searchlab.analysis.study import best_model

    space = tmp_path / "speed_space.py"
    space.write_text(textwrap.dedent(SPACE))
    experiment = sweep.run(str(space), {"epochs": 2}, name="speed", storage=tmp_path / "results")
    [trial_dir] = [p for p in Path(experiment).iterdir() if p.is_dir() and p.name.startswith("train_")]
    rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) for r in rows) and rows[-1]["val_acc"] > 0.5  # chance is 0.1
    assert "train_clean_acc_at_best" in rows[-1]
    folder = checkpoint.newest(str(trial_dir))
    state = checkpoint.load_state(folder)
    assert state["scaler"]["scale"] > 0 and set(state["scaler"]) >= {"scale", "_growth_tracker"}
    plain_keys = list(build_model("small_cnn", 10, in_channels=1).state_dict())
    assert list(state["model"]) == plain_keys == list(state["best"]["model"])
    # The CKA study's loader: a plain model, the best epoch's weights; it scores what the trial reported.
    model, config, best = best_model(str(trial_dir))
    assert config["speed"]["compile"] is True
    data = load_dataset("digits", val_size=128, test_size=128)
    with torch.no_grad():
        logits = model(normalize(data.val.x, data.mean, data.std))
    # The trial evaluated under fp16 autocast, this plain model in float32: the accuracy may differ by
    # an image whose top two logits are within fp16 rounding of each other.
    assert (logits.argmax(1) == data.val.y).float().mean().item() == pytest.approx(best["val_acc"], abs=2 / 128)
