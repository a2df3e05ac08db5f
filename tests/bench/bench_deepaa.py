"""Deep AutoAugment search: what one step costs with JVP rewards, against per-transformation backward
passes and against the forward passes the step contains.

    python tests/bench/bench_deepaa.py                  # the real step: WRN-40-2, 16 points, EXP_G 16
    python tests/bench/bench_deepaa.py --model resnet20 --points 2 --exp-g 4 --exp-gt-factor 1

What it measures
    One search step at layer 1 and at layer 2 (``deepaa.search_step``: draw 16 points of real
    CIFAR-10, augment, g_V and g_T by weighted backward passes, rewards, Adam, cos after the
    update), timed twice from the same state, so on the same points and images:
    - with JVP rewards: one forward-mode JVP over the point's E (layer 1) or EXP_G x E (layer 2)
      augmented images;
    - with the per-transformation backward loop in their place: for each of the E = 139
      transformations one backward pass over its copies (1 image at layer 1, the EXP_G prefixed
      copies at layer 2) and a dot product with the tangent.
    Printed as ``jvp ratio layer1 N.Nx`` and ``jvp ratio layer2 N.Nx`` (loop step / JVP step; the
    issue's goal is >= 30x). The rewards of both, on the same points, must agree within 1e-5: checked
    in float64 on the point where they differ most in float32. In float32 both carry the same
    rounding of g_V, g_T and the tangent (the mean of per-image gradients cancels), up to about 1%
    of the largest reward on an untrained WRN-40-2; that is printed too. The rewards alone (with
    their g_V and g_T, without the Adam step and cos-after) are timed once as well.

    The physical limit: the JVP step against plain forward passes (no autograd) of every image the
    step puts through the proxy, once per pass: the validation images, the g_T images (twice with
    cos_after: before and after the update) and the JVP images. A backward or a JVP costs two to
    three forwards (each conv becomes three: the forward and the input and weight gradients, or the
    primal and two tangent terms), so 2-3x is what batching alone cannot beat. The loop step against
    the same forward passes bounds what any step can gain over the loop on the device measured: on a
    CPU a pass over one image costs about what it costs inside a batch, so that bound is a few x; the
    issue's 30x needs a device where batch-1 passes waste most of it (a GPU).

    The proxy is not pretrained (the cost does not depend on its weights); its BN statistics are
    set from a few batches of training images so that activations have realistic scales. Runs are
    timed in interleaved rounds (timing.interleave); a run under load is flagged.

Runtime
    At the defaults a layer-2 step pushes 16 x (64 + 2 x 556) images through backward passes and
    16 x 2224 through the JVP, and the loop step as many through backward passes. On a 2-core CPU
    (WRN-40-2, measured under load): about 10 s per point for a layer-1 JVP step and 45 s at layer
    2, the loop steps 3-4x that; with the rewards timed once more and one point in float64, the
    whole benchmark takes two to three hours at one round. The second command above takes about
    5 minutes; ``--model wrn40_2 --points 1 --exp-g 4 --exp-gt-factor 1`` about 20.
"""
import argparse
import copy
import time

import torch

from searchlab import deepaa
from searchlab.data import batches, load_dataset, normalize
from searchlab.models import build_model
from timing import interleave, timed

GOAL = 30.0
TOLERANCE = 1e-5


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wrn40_2", help="proxy architecture (searchlab.models); "
                        "e.g. resnet20 or small_cnn for a quick run")
    parser.add_argument("--points", type=int, default=16)
    parser.add_argument("--val-images", type=int, default=64)
    parser.add_argument("--exp-gt-factor", type=int, default=4)
    parser.add_argument("--exp-g", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=256, help="images per forward/backward/JVP call")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    return parser.parse_args(argv)


def loop_point_rewards(proxy, label, val_x, images, probs, chunk=256):
    """deepaa.point_rewards with the JVP replaced by one backward pass per transformation."""
    dtype, device = proxy.dtype, proxy.device
    n_val, (g, e) = len(val_x), images.jvp.shape[:2]

    def labels(n):
        return torch.full((n,), int(label), device=device)
    g_v = deepaa.gradient(proxy, val_x, labels(n_val), torch.full((n_val,), 1.0 / n_val, dtype=dtype, device=device),
                          chunk)
    g_t = deepaa.gradient(proxy, images.gt, labels(len(images.gt)), images.gt_weights(probs).to(device, dtype), chunk)
    t = deepaa.tangent(g_v, g_t)
    weights = torch.full((g,), 1.0 / g, dtype=dtype, device=device)
    rewards = torch.stack([deepaa.gradient(proxy, images.jvp[:, i], labels(g), weights, chunk) @ t for i in range(e)])
    rewards = rewards / (g_t.norm() * g_v.norm())
    return deepaa.PointResult(rewards.double().cpu(), deepaa.cosine(g_v, g_t), int(label), g_v, images)


def calibrate_bn(model, images, mean, std, batches_=4, batch_size=128):
    """Running BN statistics from a few batches (cumulative average), weights untouched."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for k, (x, _) in enumerate(batches(images, batch_size)):
            if k == batches_:
                break
            model(normalize(x, mean, std))


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset("cifar10", val_size=10000)
    pools = deepaa.search_pools(data)
    torch.manual_seed(0)
    model = build_model(args.model, 10)
    calibrate_bn(model, pools.pretrain, pools.mean, pools.std)
    proxy64 = deepaa.freeze(copy.deepcopy(model).double(), pools.mean, pools.std)
    proxy = deepaa.freeze(model, pools.mean, pools.std)
    space = deepaa.Space()
    settings = deepaa.Settings(points=args.points, val_images=args.val_images, exp_gt_factor=args.exp_gt_factor,
                               exp_g=args.exp_g, chunk=args.chunk)
    e = len(space)
    print(f"proxy {args.model}: {proxy.size:,} parameters in the vector (conv and linear); {args.points} points "
          f"x {args.val_images} validation images; layer 2: g_T from {args.exp_gt_factor * e} samples, rewards "
          f"from {args.exp_g} x {e}; chunks of {args.chunk}; {args.threads} threads; {args.rounds} round(s)")
    for layer in args.layers:
        bench_layer(args, layer, proxy, proxy64, pools, space, settings)


def bench_layer(args, layer, proxy, proxy64, pools, space, settings):
    e = len(space)
    frozen = torch.full((layer - 1, e), 1.0 / e, dtype=torch.float64)  # a uniform layer 1 under layer 2

    def fresh():
        return deepaa.LayerSearch(e, settings, seed=layer)

    # ---- the same points and images for both reward computations: equal rewards? -------------
    state = fresh()
    probs = state.probs
    points = deepaa.sample_points(pools, state.generator, settings.points, settings.val_images)
    began = time.perf_counter()
    images = deepaa.point_images(points.train_x, frozen, probs, state.generator, space, settings)
    augment_seconds = time.perf_counter() - began
    rewards = {"jvp": [], "loop": []}
    seconds = {"jvp": 0.0, "loop": 0.0}
    for j, label in enumerate(points.labels.tolist()):
        for name, method in (("jvp", deepaa.point_rewards), ("loop", loop_point_rewards)):
            seconds[name] += timed(lambda: rewards[name].append(
                method(proxy, label, points.val_x[j], images[j], probs, settings.chunk).rewards))
    float32 = {name: torch.stack(r) for name, r in rewards.items()}
    # The point where float32 disagrees most, again in float64: both methods compute the same
    # quantity, so there they agree to rounding; in float32 each carries the rounding of g_V, g_T
    # and the tangent (cancellation in the mean of per-image gradients).
    worst = int((float32["jvp"] - float32["loop"]).abs().amax(1).argmax())
    label = int(points.labels[worst])
    float64 = {name: method(proxy64, label, points.val_x[worst], images[worst], probs, settings.chunk).rewards
               for name, method in (("jvp", deepaa.point_rewards), ("loop", loop_point_rewards))}
    difference64 = float((float64["jvp"] - float64["loop"]).abs().max())

    # ---- the whole step, interleaved with the forward passes it contains ---------------------
    forward_images = [points.val_x.flatten(0, 1), images.gt.flatten(0, 1), images.jvp.flatten(0, 2)]
    if settings.cos_after:
        forward_images.append(images.gt.flatten(0, 1))

    @torch.no_grad()
    def forwards():
        for x in forward_images:
            for start in range(0, len(x), settings.chunk):
                proxy.model(proxy.inputs(x[start:start + settings.chunk]))

    runs = {
        "JVP step": lambda: deepaa.search_step(proxy, pools, frozen, fresh(), space, settings),
        "loop step": lambda: deepaa.search_step(proxy, pools, frozen, fresh(), space, settings,
                                                rewards=loop_point_rewards),
        "forwards": forwards,
    }
    result = interleave(runs, args.rounds, warmup=["forwards"])
    assert result.results["JVP step"]["cos_before"] == result.results["loop step"]["cos_before"]
    n_forward = sum(len(x) for x in forward_images)

    print(f"\nlayer {layer}: per point {len(images.gt[0])} g_T images, {images.jvp.shape[1]} x {e} JVP images; "
          f"{n_forward} images through the proxy per step")
    for name in runs:
        print(f"  {name:10s} {result.median(name):9.2f} s")
    ratio = result.ratio("loop step", "JVP step")
    print(f"jvp ratio layer{layer} {ratio:.1f}x   (median of {result.rounds} interleaved pair(s), per pair "
          f"{result.spread('loop step', 'JVP step')}; goal >= {GOAL:.0f}x: {'met' if ratio >= GOAL else 'NOT met'})")
    print(f"  rewards of the step's points, g_V and g_T included (timed once): JVP {seconds['jvp']:.2f} s, "
          f"loop {seconds['loop']:.2f} s ({seconds['loop'] / seconds['jvp']:.1f}x); the step's augmentation "
          f"{augment_seconds:.2f} s")
    print(f"  rewards layer{layer}, float64, point {worst + 1}: max |JVP - loop| {difference64:.2e} (largest "
          f"|reward| {float(float64['loop'].abs().max()):.3g}): "
          f"{'equal' if difference64 <= TOLERANCE else 'NOT equal'} within {TOLERANCE:g}")
    print(f"  rewards layer{layer}, float32, all points: max |JVP - loop| "
          f"{float((float32['jvp'] - float32['loop']).abs().max()):.2e}; point {worst + 1} against float64: "
          f"JVP {float((float32['jvp'][worst] - float64['jvp']).abs().max()):.2e}, "
          f"loop {float((float32['loop'][worst] - float64['jvp']).abs().max()):.2e}")
    print(f"  step / forward passes of its images: {result.ratio('JVP step', 'forwards'):.2f}x "
          f"(the limit is 2-3x: a backward or a JVP costs two to three forwards)")
    # Any step puts every one of its images through the proxy at least once, so no way of computing
    # the rewards can beat the loop by more than this on this device.
    print(f"  loop step / forward passes of its images: {result.ratio('loop step', 'forwards'):.1f}x "
          f"(the most any step could gain over the loop here)")
    for line in result.load_lines():
        print(f"  {line}")


if __name__ == "__main__":
    main()
