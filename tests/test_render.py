"""Critic images: palette, cluster map round trip, upscaling, overlay, deterministic PNGs."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from lvlmva.vision.render import (
    PALETTE,
    contact_sheet,
    decode_cluster_map,
    render_critic_images,
    render_many,
)


def _labels(h: int = 28, w: int = 28, ids=(0, 1, 2, 4)) -> torch.Tensor:
    """Horizontal bands of the given ids with a background border; id 3 absent."""
    labels = torch.full((h, w), -1, dtype=torch.long)
    band = (h - 4) // len(ids)
    for i, k in enumerate(ids):
        labels[2 + i * band : 2 + (i + 1) * band, 3 : w - 3] = k
    return labels


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int64)


def _png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def test_palette_has_twelve_well_separated_named_colours():
    assert len(PALETTE) >= 12
    assert list(PALETTE)[:7] == ["yellow", "magenta", "brown", "cyan", "orange", "pink", "purple"]
    assert "black" not in PALETTE
    for (a, ca), (b, cb) in itertools.combinations(PALETTE.items(), 2):
        assert np.linalg.norm(np.subtract(ca, cb)) >= 100, (a, b)
    for name, colour in PALETTE.items():
        assert np.linalg.norm(colour) >= 140, name  # far from the black background


def test_cluster_map_round_trips_and_names_present_clusters_in_id_order():
    labels = _labels()
    image = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(0))
    out = render_critic_images(image, labels)
    assert out.cluster_ids == (0, 1, 2, 4)
    assert out.colors == ("yellow", "magenta", "brown", "orange")
    decoded = decode_cluster_map(out.clusters)
    assert np.array_equal(decoded.labels, np.repeat(np.repeat(labels.numpy(), 12, 0), 12, 1))
    assert decoded.present == out.colors and decoded.names == tuple(PALETTE)
    pairs = zip(out.colors, out.cluster_ids, strict=True)
    assert decoded.counts == {c: int((labels == k).sum()) * 144 for c, k in pairs}


def test_small_images_are_upscaled_by_an_integer_factor():
    labels = _labels()
    image = torch.rand(1, 28, 28)
    out = render_critic_images(image, labels, size=336)
    assert out.size == (336, 336)
    original = np.asarray(Image.open(io.BytesIO(out.original)))
    assert original.shape == (336, 336)  # grey input stays a grey PNG
    expected = np.rint(image[0].numpy() * 255).astype(np.uint8)
    assert np.array_equal(original, np.kron(expected, np.ones((12, 12), dtype=np.uint8)))
    odd = render_critic_images(torch.rand(3, 10, 20), torch.full((10, 20), -1), size=336)
    assert odd.size == (168, 336)
    assert render_critic_images(image, labels, size=None).size == (28, 28)


def test_overlay_blends_clusters_and_keeps_background_pixels():
    labels = _labels()
    image = torch.rand(3, 28, 28, generator=torch.Generator().manual_seed(2))
    out = render_critic_images(image, labels, size=None, alpha=0.5)
    original, overlay = _pixels(out.original), _pixels(out.overlay)
    background = labels.numpy() < 0
    assert np.array_equal(overlay[background], original[background])
    first = labels.numpy() == 0
    colour = np.array(PALETTE[next(iter(PALETTE))])  # cluster 0 takes the first colour
    expected = np.rint(0.5 * original[first] + 0.5 * colour)
    assert np.abs(overlay[first] - expected).max() <= 1
    assert (_pixels(out.clusters)[background] == 0).all()


def test_png_bytes_are_deterministic():
    labels, image = _labels(), torch.rand(1, 28, 28)
    a, b = render_critic_images(image, labels), render_critic_images(image.clone(), labels)
    assert (a.original, a.clusters, a.overlay) == (b.original, b.clusters, b.overlay)
    assert a.original[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_many_gives_the_bytes_of_one_by_one_in_order(monkeypatch):
    g = torch.Generator().manual_seed(2)
    images = torch.rand(9, 3, 20, 20, generator=g)
    labels = torch.randint(-1, 7, (9, 20, 20), generator=g)
    one_by_one = [render_critic_images(images[i], labels[i]) for i in range(9)]
    assert render_many(images, labels) == one_by_one
    monkeypatch.setattr("lvlmva.vision.render.RENDER_THREADS", 1)
    assert render_many(images, labels) == one_by_one
    assert render_many(images[:0], labels[:0]) == []
    with pytest.raises(ValueError, match="8 label maps for 9 images"):
        render_many(images, labels[:8])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="do not match"):
        render_critic_images(torch.rand(1, 28, 28), torch.zeros(27, 28, dtype=torch.long))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        render_critic_images(torch.rand(2, 8, 8), torch.zeros(8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="no colour"):
        render_critic_images(torch.rand(1, 8, 8), torch.full((8, 8), len(PALETTE)))



def test_decoding_tolerates_a_few_stray_pixels_and_rejects_other_images():
    labels = _labels(ids=(0, 1))
    out = render_critic_images(torch.rand(1, 28, 28), labels, size=56)
    pixels = _pixels(out.clusters).astype(np.uint8)
    pixels[:2] = (100, 100, 100)  # 2 of 56 rows (3.6%) far from black and every colour
    decoded = decode_cluster_map(_png_bytes(pixels))
    assert np.array_equal(decoded.labels[2:], np.kron(labels.numpy(), np.ones((2, 2)))[2:])
    pixels[:4] = (100, 100, 100)  # 7%: not a cluster map
    with pytest.raises(ValueError, match="does not look like a cluster map"):
        decode_cluster_map(_png_bytes(pixels))
    with pytest.raises(ValueError, match="does not look like a cluster map"):  # red unknown
        decode_cluster_map(out.clusters, {"blue": PALETTE["blue"]})
    noise = np.random.default_rng(0).integers(0, 256, size=(80, 80, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="more than 4096 distinct colours"):
        decode_cluster_map(_png_bytes(noise))
    with pytest.raises(ValueError, match="not a readable image"):
        decode_cluster_map(b"not a png")
    with pytest.raises(ValueError, match="1 to 255 colours"):
        decode_cluster_map(out.clusters, {})


def test_contact_sheet_writes_a_readable_grid(tmp_path):
    rows = [
        render_critic_images(torch.rand(1, 28, 28), _labels(ids=ids), size=112)
        for ids in ((0, 1), (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10))
    ]
    path = contact_sheet(
        rows,
        ["#0 class 3", "#1 class 7 " + "with a long caption " * 8],
        tmp_path / "sheet" / "contact.png",
        verdicts=[{"red": True, "blue": False}, None],
        thumb=96,
    )
    sheet = Image.open(path)
    assert sheet.mode == "RGB"
    assert sheet.width >= 3 * 96 and sheet.height >= 2 * 96
    pixels = np.asarray(sheet)
    first = PALETTE[next(iter(PALETTE))]
    assert (pixels == first).all(axis=-1).sum() > 96 * 10  # cluster maps were pasted
    with pytest.raises(ValueError, match="captions"):
        contact_sheet(rows, ["only one"], tmp_path / "x.png")


def test_explain_command_writes_the_critic_images_and_a_contact_sheet(tmp_path, capsys):
    pytest.importorskip("lvlmva.vision.ppeps")
    pytest.importorskip("lvlmva.vision.checkpoint")
    from lvlmva.cli import main
    from lvlmva.vision.checkpoint import save_checkpoint
    from lvlmva.vision.datasets import load_dataset
    from lvlmva.vision.models import build_model

    info = load_dataset("decoy-digits", seed=0).info
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "model.pt", build_model("mlp", info), "mlp", info)
    out = tmp_path / "explained"
    argv = ["explain", "--model", str(tmp_path / "model.pt"), "--n", "3", "--clusters", "5"]
    assert main([*argv, "--device", "cpu", "--out", str(out)]) == 0
    assert str(out / "contact_sheet.png") in capsys.readouterr().out
    indices = sorted(int(p.name.split("_")[0]) for p in out.glob("*_clusters.png"))
    assert len(indices) == 3
    for index in indices:
        for kind in ("original", "overlay"):
            assert Image.open(out / f"{index}_{kind}.png").size == (336, 336)
        decoded = decode_cluster_map((out / f"{index}_clusters.png").read_bytes())
        assert decoded.labels.shape == (336, 336)
        assert 0 < len(decoded.present) <= 5  # an untrained model still attributes something
    assert Image.open(out / "contact_sheet.png").height > 3 * 168
    assert (
        main(["explain", "--model", str(tmp_path / "model.pt"), "--method", "x", "--out", str(out)])
        == 2
    )
