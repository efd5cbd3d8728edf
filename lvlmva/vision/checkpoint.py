"""Model checkpoints that reload with nothing else given.

A checkpoint file is a plain dict (loadable with ``torch.load(weights_only=True)``):
``{"format": "lvlmva-checkpoint", "version": 1, "arch": str, "info": DatasetInfo as a dict,
"state_dict": {...}, "extra": {...}}``. `info` holds the class names, channels, image size,
normalisation and the options that rebuild the dataset.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lvlmva.errors import DataError, LvlmvaError
from lvlmva.vision.datasets.base import DatasetInfo

FORMAT = "lvlmva-checkpoint"
VERSION = 1
_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (in eval mode), its architecture and dataset info."""

    model: nn.Module
    arch: str
    info: DatasetInfo
    extra: dict = field(default_factory=dict)


def _one_line(exc: Exception, limit: int = 240) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_plain(value: object, where: str) -> None:
    """Raise TypeError unless `value` is made of dicts (str keys), lists, tuples and scalars."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: checkpoint dict keys must be str, got {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise TypeError(f"{where}: {type(value).__name__} cannot be stored in a checkpoint")


def _info_to_dict(info: DatasetInfo) -> dict:
    data = dataclasses.asdict(info)
    for key, value in data.items():
        if isinstance(value, tuple):
            data[key] = list(value)
    return data


def _info_from_dict(data: dict) -> DatasetInfo:
    names = {f.name for f in dataclasses.fields(DatasetInfo)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown dataset fields {', '.join(sorted(unknown))}")
    values = dict(data)
    for key in ("class_names", "mean", "std", "group_names"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    return DatasetInfo(**values)


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    arch: str,
    info: DatasetInfo,
    extra: dict | None = None,
) -> Path:
    """Write `model`'s weights with `arch` and `info` to `path` (parent folders are created).

    `extra` holds plain values only (str, numbers, bools, None, tensors, lists, dicts).
    """
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "info": _info_to_dict(info),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": dict(extra or {}),
    }
    _check_plain(payload["info"], "info")
    _check_plain(payload["extra"], "extra")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> Checkpoint:
    """Rebuild the model saved at `path` on `map_location`, in eval mode.

    A missing, corrupt or foreign file raises DataError "cannot load checkpoint PATH: reason".
    """
    from lvlmva.vision.models import build_model

    def fail(reason: str) -> DataError:
        return DataError(f"cannot load checkpoint {path}: {reason}")

    if not Path(path).is_file():
        raise fail("no such file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for non-torch or damaged files
        raise fail(f"not a readable torch file ({_one_line(exc)})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise fail("not an lvlmva checkpoint (written by `lvlmva train` or save_checkpoint)")
    version = payload.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise fail(f"format version {version!r} is newer than this lvlm-va reads ({VERSION})")
    try:
        info = _info_from_dict(payload["info"])
        arch = payload["arch"]
        state_dict = payload["state_dict"]
        extra = payload.get("extra") or {}
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f"malformed content ({exc})") from exc
    try:
        model = build_model(arch, info)
    except LvlmvaError as exc:
        raise fail(str(exc)) from exc
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise fail(f"weights do not fit a {arch} ({_one_line(exc)})") from exc
    model.to(map_location).eval()
    return Checkpoint(model=model, arch=arch, info=info, extra=dict(extra))
