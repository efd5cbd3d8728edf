"""`lvlmva explain`: the Critic images (original, clusters, overlay) of some samples, and a
contact sheet a person can look at, with no LVLM involved."""

from __future__ import annotations

import argparse
from pathlib import Path

from lvlmva.commands.common import Command, add_dataset_arguments
from lvlmva.errors import ConfigError

SPLITS = ("test", "train", "val")


COMMAND = Command(
    "explain",
    help="render a model's explanations as the Critic would see them",
    description="Explain samples for their true class, segment the attributions with "
    "PPEPS-WGM and write, per sample, the original, the cluster map and the overlay as "
    "PNGs, plus contact_sheet.png with all of them.",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint written by `lvlmva train`")
    add_dataset_arguments(
        p,
        dataset_help="dataset name (default: the one the model was trained on)",
        image_folder=False,
    )
    p.add_argument("--n", type=int, default=16, help="samples to explain (default 16)")
    p.add_argument("--clusters", type=int, default=7, help="PPEPS-WGM clusters per image")
    p.add_argument(
        "--method",
        default="deeplift-shap",
        help="deeplift-shap | integrated-gradients | gradient-shap (default deeplift-shap)",
    )
    p.add_argument("--split", choices=SPLITS, default="test", help="split to draw samples from")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample draw and explanations")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--out", required=True, help="output folder")


def run(args: argparse.Namespace) -> int:
    from lvlmva.commands.common import load_model_and_data, resolve_device
    from lvlmva.vision.attribution import METHODS
    from lvlmva.vision.render import PALETTE, contact_sheet

    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    if not 1 <= args.clusters <= len(PALETTE):
        raise ConfigError(f"--clusters must be between 1 and {len(PALETTE)}, got {args.clusters}")
    if args.method not in METHODS:
        raise ConfigError(f"--method {args.method!r} is not one of {', '.join(METHODS)}")
    device = resolve_device(args.device)
    checkpoint, splits = load_model_and_data(args, device)
    split = getattr(splits, args.split)
    if len(split) == 0:
        raise ConfigError(
            f"the {args.split} split of {splits.info.name} is empty; pick another --split"
        )
    rows, captions = _explain_samples(checkpoint.model, splits, split, args, device)
    sheet = contact_sheet(rows, captions, Path(args.out) / "contact_sheet.png")
    print(
        f"Explained {len(rows)} {args.split} samples of {splits.info.name} with {args.method} "
        f"and {args.clusters} clusters; wrote <index>_original/_clusters/_overlay.png and {sheet}"
    )
    return 0


def _explain_samples(model, splits, split, args: argparse.Namespace, device) -> tuple[list, list]:
    """Explain, segment and render `args.n` seeded random samples of `split`; write each
    sample's three PNGs; return the rendered rows and their captions."""
    import torch

    from lvlmva.vision.attribution import explain
    from lvlmva.vision.ppeps import segment
    from lvlmva.vision.render import render_critic_images

    generator = torch.Generator().manual_seed(args.seed)
    indices = torch.randperm(len(split), generator=generator)[: args.n].sort().values
    images, labels = split.images[indices], split.labels[indices]
    attributions = explain(
        model, images, labels, method=args.method, baselines=splits.train.images,
        device=device, seed=args.seed,
    )  # fmt: skip
    seg = segment(attributions, args.clusters, seed=args.seed, device=device)
    model.eval()
    with torch.no_grad():
        probs = model(images.to(device)).softmax(dim=-1).cpu()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, captions = [], []
    for j, index in enumerate(indices.tolist()):
        cluster_labels = seg.labels[j].cpu()
        rendered = render_critic_images(images[j], cluster_labels)
        for kind in ("original", "clusters", "overlay"):
            (out / f"{index}_{kind}.png").write_bytes(getattr(rendered, kind))
        rows.append(rendered)
        spurious = _spurious_colors(rendered, cluster_labels, split.spurious_masks, index)
        captions.append(
            _caption(
                index, args.split, splits.info.class_names, int(labels[j]), probs[j],
                rendered.colors, spurious,
            )
        )  # fmt: skip
    return rows, captions


def _spurious_colors(
    rendered, cluster_labels, spurious_masks, index: int
) -> tuple[str, ...] | None:
    """Colours of the clusters that touch the sample's ground-truth spurious region, if known."""
    if spurious_masks is None:
        return None
    region = spurious_masks[index].bool()
    return tuple(
        color
        for color, k in zip(rendered.colors, rendered.cluster_ids, strict=True)
        if bool(((cluster_labels == k) & region).any())
    )


def _caption(
    index: int,
    split: str,
    class_names: tuple[str, ...],
    label: int,
    probs,
    colors: tuple[str, ...],
    spurious: tuple[str, ...] | None,
) -> str:
    predicted = int(probs.argmax())
    text = (
        f"#{index} ({split}); class: {class_names[label]}; predicted: {class_names[predicted]} "
        f"(p={float(probs[predicted]):.2f}); clusters: {', '.join(colors) or 'none'}"
    )
    if spurious is not None:
        text += f"; on the spurious region: {', '.join(spurious) or 'none'}"
    return text
