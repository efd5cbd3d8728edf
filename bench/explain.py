"""Explain, segment and render throughput, side by side with a plain forward + backward pass.

    python bench/explain.py                                  # the three models on the CPU
    python bench/explain.py --device cuda
    python bench/explain.py --models resnet18-64 --images 32 --repeats 5 --json out.json

Models (random weights, seeded: what an explanation costs does not depend on them): the
reference MLP on 28 px decoy digits, ResNet-18 on 64 px synth-lesions, ResNet-50 on 224 px
synth-lesions. Every stage runs with its defaults: `explain` (DeepLiftShap, 25 backgrounds
drawn from the training images, automatic batch size), `segment` (PPEPS-WGM, J = 7) on the same
device, `render_many` (the three Critic PNGs at 336 px on the render thread pool), and the
pipeline's `explain_segment_render` over the same images in the pipeline's batches.

The reference is a plain forward + backward pass (the gradient of the explained class's score
with respect to the input) over exactly the samples DeepLiftShap puts through the model: an
input and a background for every (image, background) pair, in the same passes; a second
reference also takes the parameters' gradients (the backward pass of a training step). Explain
and references alternate `--repeats` times; the ratio is the median over the repeats of explain
time / reference time (and the same of CPU time, user + system from `resource.getrusage`, which
a machine shared with other jobs disturbs less than wall time).
`--no-trim-size` plans the CPU pass as before its trim-size bound (the largest activation within
the allocator's reuse size only). `--old` also runs `explain(batch_size=64)`, the fixed default
before the automatic size (skipped where its estimated working set exceeds half the RAM);
`--tricks` times one DeepLiftShap pass with channels_last, in bfloat16 and (`--compile`)
compiled, and how far their maps are from float32.
Also reported: the maps' completeness error (DeepLift's summation-to-delta), and every stage's
minor page faults (`ru_minflt`; for explain also per repeat, with its system / user time).
Prints a table and one JSON line per model; `--json` writes them all.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from lvlmva.pipeline.explain import explain_segment_render
from lvlmva.pipeline.options import CritiqueOptions
from lvlmva.vision import batch_sizing
from lvlmva.vision.attribution import Explainer, draw_backgrounds, explain, mean_over_pairs
from lvlmva.vision.batch_sizing import WORKING_SET_FACTOR, available_memory_bytes
from lvlmva.vision.datasets import load_dataset
from lvlmva.vision.models import build_model
from lvlmva.vision.ppeps import segment
from lvlmva.vision.render import RENDER_THREADS, render_critic_images, render_many


@dataclass(frozen=True)
class Case:
    name: str
    arch: str
    dataset: str
    options: dict
    images: int  # default number of explained images


CASES = {
    "mlp-28": Case("mlp-28", "mlp", "decoy-digits", {}, 256),
    "resnet18-64": Case("resnet18-64", "resnet18", "synth-lesions", {}, 16),
    "resnet50-224": Case(
        "resnet50-224",
        "resnet50",
        "synth-lesions",
        {"image_size": 224, "n_train": 200, "n_val": 8, "n_test": 8},
        1,
    ),
}
N_BASELINES = 25
OLD_BATCH = 64


@dataclass(frozen=True)
class Timing:
    """Wall, user and system seconds and minor page faults of one stage (the repeat with the
    median wall time)."""

    wall_s: float
    user_s: float
    sys_s: float
    minor_faults: int = 0


def timed(fn, device: torch.device) -> tuple[object, Timing]:
    """`fn()`'s result and its wall / user / system time and minor faults (after a device
    sync)."""
    start_usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return result, Timing(
        wall,
        usage.ru_utime - start_usage.ru_utime,
        usage.ru_stime - start_usage.ru_stime,
        usage.ru_minflt - start_usage.ru_minflt,
    )


def median_timing(timings: list[Timing]) -> Timing:
    ordered = sorted(timings, key=lambda t: t.wall_s)
    return ordered[len(ordered) // 2]


def plain_forward_backward(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    backgrounds: Tensor,
    samples_per_forward: int,
    *,
    parameters: bool = False,
) -> None:
    """Forward + backward over DeepLiftShap's samples (for every (image, background) pair the
    image and the background) in the passes `explain` makes (`mean_over_pairs` with
    `samples_per_forward // 2` pairs per pass): the gradient of the explained class's score
    with respect to the input, and with `parameters` also to every parameter (the autograd
    work of a training step)."""
    wrt = [p for p in model.parameters() if p.requires_grad] if parameters else []
    model.eval()

    def pairs(image: Tensor, background: Tensor) -> Tensor:
        x = torch.cat((images[image], backgrounds[background])).requires_grad_()
        score = model(x).gather(1, targets[image].repeat(2)[:, None]).sum()
        return torch.autograd.grad(score, [x, *wrt])[0][: len(image)]

    mean_over_pairs(
        pairs, len(images), len(backgrounds), max(1, samples_per_forward // 2), images.device
    )


def relative_difference(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def load_case(case: Case, n_images: int, device: torch.device):
    splits = load_dataset(case.dataset, **case.options)
    torch.manual_seed(0)
    model = build_model(case.arch, splits.info).to(device).eval()
    train = splits.train
    index = torch.arange(min(n_images, len(train)))
    return model, train, index


def _per_image(timing: Timing, n: int) -> dict:
    return {
        "images_per_s": n / timing.wall_s,
        "ms_per_image": 1e3 * timing.wall_s / n,
        "user_s": timing.user_s,
        "sys_s": timing.sys_s,
        "sys_over_user": timing.sys_s / timing.user_s if timing.user_s > 0 else 0.0,
        "minor_faults": timing.minor_faults,
    }


def explain_vs_plain(model, train, images, labels, device, repeats: int) -> tuple[dict, Tensor]:
    """`explain` with every default, alternating with the two plain references."""
    plan = Explainer(model, baselines=train.images, n_baselines=N_BASELINES, device=device).plan()
    backgrounds = draw_backgrounds(train.images, N_BASELINES, images.shape[1:], seed=0)
    on_device = (images.to(device), labels.to(device), backgrounds.to(device))

    def do_explain() -> Tensor:
        return explain(model, images, labels, baselines=train.images, device=device)

    def do_plain(parameters: bool) -> None:
        plain_forward_backward(model, *on_device, plan.samples_per_forward, parameters=parameters)

    do_explain(), do_plain(False)  # warm-up: kernels, allocator, the plan
    explained, plain, full = [], [], []
    for _ in range(repeats):
        maps, t = timed(do_explain, device)
        explained.append(t)
        plain.append(timed(lambda: do_plain(False), device)[1])
        full.append(timed(lambda: do_plain(True), device)[1])
    t_explain, t_plain, t_full = (median_timing(t) for t in (explained, plain, full))
    ratios = [e.wall_s / p.wall_s for e, p in zip(explained, plain, strict=True)]
    cpu_ratios = [
        (e.user_s + e.sys_s) / (p.user_s + p.sys_s) for e, p in zip(explained, plain, strict=True)
    ]
    n = len(images)
    return {
        "pairs_per_image": len(backgrounds),
        "samples_per_forward": plan.samples_per_forward,
        "plan_bound": plan.bound,
        "largest_activation_bytes_per_sample": plan.profile.largest_bytes,
        "explain": _per_image(t_explain, n),
        "plain_forward_backward": _per_image(t_plain, n),
        "plain_with_parameter_gradients": _per_image(t_full, n),
        "explain_over_plain": statistics.median(ratios),
        "explain_over_plain_each": ratios,
        "explain_sys_over_user_each": [t.sys_s / t.user_s if t.user_s else 0.0 for t in explained],
        "explain_minor_faults_each": [t.minor_faults for t in explained],
        "explain_over_plain_cpu_time": statistics.median(cpu_ratios),
        "explain_over_plain_with_parameters": statistics.median(
            e.wall_s / f.wall_s for e, f in zip(explained, full, strict=True)
        ),
        "completeness_error": completeness_error(model, maps, images, labels, backgrounds),
    }, maps


def completeness_error(model, maps, images, labels, backgrounds) -> float:
    """mean |sum of a map - (f(x) - mean_b f(b))| / mean |f(x) - mean_b f(b)| for the explained
    class: 0 for exact DeepLift rescale-rule maps (their defining "summation-to-delta")."""
    device = next(model.parameters()).device
    with torch.no_grad():
        score = model(images.to(device)).gather(1, labels.to(device)[:, None])[:, 0]
        reference = model(backgrounds.to(device))[:, labels.to(device)].mean(0)
    delta = (score - reference).cpu()
    return float((maps.flatten(1).sum(1) - delta).abs().mean() / delta.abs().mean())


def segment_and_render(images: Tensor, maps: Tensor, device: torch.device) -> dict:
    """`segment` on the device; rendering one by one and with `render_many` (same bytes)."""
    seg, t_seg = timed(lambda: segment(maps, 7, seed=0, device=device), device)
    n = len(images)
    serial, t_serial = timed(
        lambda: [render_critic_images(images[j], seg.labels[j]) for j in range(n)], device
    )
    pooled, t_pool = timed(lambda: render_many(images, seg.labels), device)
    assert pooled == serial, "render_many changed the bytes"
    return {
        "segment": _per_image(t_seg, n),
        "render_one_by_one": _per_image(t_serial, n),
        "render": _per_image(t_pool, n),
        "render_threads": RENDER_THREADS,
    }


def pipeline(model, train, index: Tensor, device: torch.device) -> dict:
    """`explain_segment_render` in the pipeline's batches (backgrounds from the training split)."""
    options = CritiqueOptions()

    def run() -> None:
        for batch in index.split(options.explain_batch):
            explain_segment_render(model, train, batch, options, seed=0, device=device)

    return _per_image(timed(run, device)[1], len(index))


def run_case(case: Case, args, device: torch.device) -> dict:
    """Every stage of one model; a dict of the figures (see the module docstring)."""
    model, train, index = load_case(case, args.images or case.images, device)
    images, labels = train.images[index], train.labels[index]
    load_before = os.getloadavg()[0]
    result = {"model": case.name, "device": str(device), "images": len(images)}
    figures, maps = explain_vs_plain(model, train, images, labels, device, args.repeats)
    result.update(figures)
    one_by_one = explain(
        model, images[:4], labels[:4], baselines=train.images, batch_size=1, device=device
    )
    result["auto_vs_batch_size_1"] = relative_difference(maps[:4], one_by_one)
    if args.old:
        result["old_batch_64"] = run_old(model, images, labels, train, device, maps)
    result.update(segment_and_render(images, maps, device))
    result["pipeline"] = pipeline(model, train, index, device)
    if args.tricks:
        result["tricks"] = tricks(model, train, images, labels, device, args)
    result["load_average"] = [load_before, os.getloadavg()[0]]
    return result


def run_old(model, images, labels, train, device, maps) -> dict:
    """`explain(batch_size=64)` once, if its working set fits half the RAM."""
    plan = Explainer(model, baselines=train.images, device=device).plan()
    samples = min(OLD_BATCH, len(images)) * 2 * N_BASELINES
    need = samples * WORKING_SET_FACTOR * plan.profile.output_bytes
    if device.type == "cpu" and need > available_memory_bytes() / 2:
        return {"skipped": f"needs about {need / 2**30:.0f} GiB"}

    def old_default() -> Tensor:
        return explain(
            model, images, labels, baselines=train.images, batch_size=OLD_BATCH, device=device
        )

    old, t = timed(old_default, device)
    return {**_per_image(t, len(images)), "vs_auto": relative_difference(old, maps)}


def trick_variants(model, x: Tensor, b: Tensor, compile_: bool) -> dict:
    """(model, inputs, backgrounds) as is, channels_last (convolutional models), bfloat16 and
    optionally torch.compile'd (the copies share nothing with `model`)."""
    cl = torch.channels_last
    variants = {"float32": (model, x, b)}
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        variants["channels_last"] = (
            copy.deepcopy(model).to(memory_format=cl),
            x.contiguous(memory_format=cl),
            b.contiguous(memory_format=cl),
        )
    variants["bfloat16"] = (copy.deepcopy(model).to(torch.bfloat16), x.bfloat16(), b.bfloat16())
    if compile_:
        variants["compiled"] = (torch.compile(copy.deepcopy(model)), x, b)
    return variants


def tricks(model, train, images, labels, device: torch.device, args) -> dict:
    """One DeepLiftShap pass of the planned size as `explain` runs it (`RescaleDeepLiftShap`:
    k images against c backgrounds) and the plain pass over its 2 k c samples for every
    `trick_variants` entry: median times, and the relative L2 distance of its maps from
    float32's."""
    from lvlmva.vision.deeplift_rules import rule_view
    from lvlmva.vision.deeplift_shap import RescaleDeepLiftShap

    plan = Explainer(model, baselines=train.images, device=device).plan()
    pairs = max(1, plan.samples_per_forward // 2)
    c = min(pairs, N_BASELINES)
    k = max(1, min(pairs // c, len(images)))
    x = images[:k].to(device)
    b = draw_backgrounds(train.images, N_BASELINES, images.shape[1:], seed=0)[:c].to(device)
    t = labels[:k].to(device)

    def deeplift(m, xx, bb) -> Tensor:
        return RescaleDeepLiftShap(m).attribute(xx, bb, t)

    def plain(m, xx, bb) -> None:
        z = torch.cat((xx.repeat_interleave(c, 0), bb.repeat(k, 1, 1, 1))).requires_grad_()
        score = m(z).gather(1, t.repeat_interleave(c).repeat(2)[:, None]).float().sum()
        torch.autograd.grad(score, z)

    variants = trick_variants(rule_view(model), x, b, args.compile)
    reference = deeplift(*variants["float32"]).detach().float()
    out: dict = {"pairs_per_pass": k * c}
    for name, variant in variants.items():
        first = timed(functools.partial(deeplift, *variant), device)[1].wall_s  # compiles
        maps = deeplift(*variant).detach().float()
        runs = [
            (
                timed(functools.partial(deeplift, *variant), device)[1],
                timed(functools.partial(plain, *variant), device)[1],
            )
            for _ in range(args.repeats)
        ]
        out[name] = {
            "first_call_s": first,
            "deeplift_s": median_timing([r[0] for r in runs]).wall_s,
            "plain_s": median_timing([r[1] for r in runs]).wall_s,
            "relative_l2_vs_float32": float((maps - reference).norm() / reference.norm()),
            "completeness_error": shap_completeness(variant[0], maps, x, b, t),
        }
    return out


def shap_completeness(model, maps: Tensor, x: Tensor, b: Tensor, target: Tensor) -> float:
    """`completeness_error` of DeepLiftShap maps of `x` against the backgrounds `b`."""
    model = copy.deepcopy(model).float()
    with torch.no_grad():
        reference = model(b)[:, target].mean(0)
        delta = (model(x).gather(1, target[:, None])[:, 0] - reference).cpu()
    return float((maps.flatten(1).sum(1).cpu() - delta).abs().mean() / delta.abs().mean())


def table(results: list[dict]) -> str:
    rows = [
        "| model | samples / pass | explain img/s | plain fwd+bwd img/s | explain / plain: "
        "wall, CPU time (wall, with parameter gradients) | sys / user (explain) | segment "
        "img/s | render img/s (1 thread) | pipeline img/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| {r['model']} | {r['samples_per_forward']} ({r['plan_bound']}) | "
            f"{r['explain']['images_per_s']:.2f} | "
            f"{r['plain_forward_backward']['images_per_s']:.2f} | "
            f"{r['explain_over_plain']:.2f}, {r['explain_over_plain_cpu_time']:.2f} "
            f"({r['explain_over_plain_with_parameters']:.2f}) | "
            f"{r['explain']['sys_over_user']:.3f} | "
            f"{r['segment']['images_per_s']:.1f} | {r['render']['images_per_s']:.1f} "
            f"({r['render_one_by_one']['images_per_s']:.1f}) | "
            f"{r['pipeline']['images_per_s']:.2f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=tuple(CASES), default=list(CASES))
    parser.add_argument("--images", type=int, default=None, help="images per model")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--old", action="store_true", help="also run batch_size=64")
    parser.add_argument("--tricks", action="store_true", help="channels_last, bfloat16 passes")
    parser.add_argument("--compile", action="store_true", help="with --tricks: torch.compile")
    parser.add_argument(
        "--no-trim-size", action="store_true", help="CPU plan without its trim-size bound (before)"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.no_trim_size:
        batch_sizing.CPU_TRIM_BYTES = 1 << 62
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require")
    warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
    header = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "command": " ".join(["python", "bench/explain.py", *sys.argv[1:]]),
    }
    print(json.dumps(header), flush=True)
    results = []
    for name in args.models:
        result = run_case(CASES[name], args, device)
        print(json.dumps(result), flush=True)
        results.append(result)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"header": header, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
