"""Reading and writing Hugging Face checkpoint directories.

Reads ``model.safetensors``, ``pytorch_model.bin`` (``torch.load(weights_only=True)``) and sharded
checkpoints with their ``*.index.json``; writes ``model.safetensors`` or ``pytorch_model.bin``. Key matching against a
model (prefix handling, renames, ignored keys, shape checks) is :func:`match_state_dict`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = [
    "SAFE_WEIGHTS_NAME",
    "WEIGHTS_NAME",
    "CheckpointError",
    "LoadingInfo",
    "find_weight_files",
    "load_state_dict",
    "match_state_dict",
    "resolve_model_dir",
    "stale_weight_files",
    "write_weights",
]

SAFE_WEIGHTS_NAME = "model.safetensors"
WEIGHTS_NAME = "pytorch_model.bin"


class CheckpointError(ValueError):
    """A checkpoint directory or file that cannot be read or does not fit the model."""


def resolve_model_dir(name_or_path: str | os.PathLike, **hub_kwargs) -> Path:
    """A local directory as is (``~`` expanded); otherwise a hub id (``name`` or ``owner/name``) fetched with
    huggingface_hub when it is installed. A path no hub id can be (``./x``, ``/x``, ``x/``, ``a/b/c``) that
    does not exist is an error naming the directory looked for."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; from_pretrained expects a checkpoint directory")
    if text.startswith((".", "/", "~")) or text.endswith(("/", os.sep)) or text.count("/") > 1:
        raise CheckpointError(f"no checkpoint directory at {path} ({path.absolute()})")
    local = f"{text!r} is not a local directory (no {path.absolute()})"
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"{local}, and fetching it from the Hugging Face hub needs the huggingface_hub package (pip install "
            "huggingface_hub), or download it yourself and pass the directory"
        ) from None
    patterns = ["*.json", "*.safetensors", "*.bin", "*.model"]
    try:
        return Path(snapshot_download(text, allow_patterns=patterns, **hub_kwargs))
    except Exception as exc:
        raise CheckpointError(f"{local}, and could not fetch {text!r} from the Hugging Face hub: {exc}") from exc


def _index_shards(index: Path) -> list[str]:
    """The shard file names a ``*.index.json`` lists, sorted; CheckpointError if it is not a valid index."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index} is not a valid shard index: {exc}") from None


def find_weight_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint directory, preferring safetensors; shards listed by their index."""
    for single, index in (
        (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_NAME + ".index.json"),
        (WEIGHTS_NAME, WEIGHTS_NAME + ".index.json"),
    ):
        if (directory / single).is_file():
            return [directory / single]
        if (directory / index).is_file():
            shards = _index_shards(directory / index)
            missing = [s for s in shards if not (directory / s).is_file()]
            if missing:
                raise CheckpointError(f"{directory / index} lists shards that are missing: {missing}")
            return [directory / s for s in shards]
    raise CheckpointError(
        f"no weights in {directory}: expected {SAFE_WEIGHTS_NAME}, {WEIGHTS_NAME} or a sharded checkpoint index"
    )


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"cannot read {path}: not a valid safetensors file ({exc})") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read {path} with torch.load(weights_only=True): {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state


def load_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory, on the CPU, in their stored dtypes."""
    state: dict[str, torch.Tensor] = {}
    for path in find_weight_files(Path(directory)):
        state.update(_read_file(path))
    return state


def write_weights(state: dict[str, torch.Tensor], path: str | os.PathLike, safe_serialization: bool = True) -> None:
    """Write ``state`` (contiguous CPU copies) to ``path`` as safetensors, or with torch.save (not atomic: give
    it a temporary path)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    if safe_serialization:
        from safetensors.torch import save_file

        save_file(tensors, str(path), metadata={"format": "pt"})
    else:
        torch.save(tensors, path)


def stale_weight_files(directory: str | os.PathLike, written: str) -> list[Path]:
    """The weight files of an earlier save in ``directory`` that a save writing the single file ``written``
    leaves behind: the other format's single file, both shard indexes and the shards they list. Loaders prefer
    ``model.safetensors`` and its index to ``pytorch_model.bin``, so one left beside a new ``pytorch_model.bin``
    would be read in its place."""
    directory = Path(directory)
    stale = [directory / name for name in (SAFE_WEIGHTS_NAME, WEIGHTS_NAME) if name != written]
    for index in (SAFE_WEIGHTS_NAME + ".index.json", WEIGHTS_NAME + ".index.json"):
        path = directory / index
        if not path.is_file():
            continue
        stale.append(path)
        try:
            shards = _index_shards(path)
        except CheckpointError:
            continue  # an unreadable index: its shards are not known, only the index goes
        stale += [directory / shard for shard in shards if Path(shard).name == shard and shard != written]
    return [path for path in stale if path.is_file()]


@dataclass
class LoadingInfo:
    """What happened to each key, as transformers reports it."""

    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    mismatched_keys: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    error_msgs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list]:
        return {
            "missing_keys": self.missing_keys,
            "unexpected_keys": self.unexpected_keys,
            "mismatched_keys": self.mismatched_keys,
            "error_msgs": self.error_msgs,
        }


def _rename_legacy(key: str) -> str:
    # Old checkpoints name LayerNorm parameters gamma/beta.
    if key.endswith(".gamma"):
        return key[: -len(".gamma")] + ".weight"
    if key.endswith(".beta"):
        return key[: -len(".beta")] + ".bias"
    return key


def match_state_dict(
    checkpoint: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    *,
    prefix: str,
    ignore_unexpected: list[str] = (),
    ignore_missing: list[str] = (),
    ignore_mismatched_sizes: bool = False,
) -> tuple[dict[str, torch.Tensor], LoadingInfo]:
    """Map checkpoint keys onto the model's keys.

    Handles checkpoints saved with or without the base-model ``prefix`` (a base model loaded into a head
    model and back), legacy ``gamma``/``beta`` names, keys to ignore (regular expressions, searched), and
    shape mismatches (CheckpointError naming the key unless ``ignore_mismatched_sizes``).

    Returns:
        (tensors to load keyed by model key, LoadingInfo).
    """
    state = {_rename_legacy(k): v for k, v in checkpoint.items()}
    dotted = prefix + "."
    model_has_prefix = any(k.startswith(dotted) for k in expected)
    ckpt_has_prefix = any(k.startswith(dotted) for k in state)
    if model_has_prefix and not ckpt_has_prefix:
        state = {(dotted + k if dotted + k in expected else k): v for k, v in state.items()}
    elif ckpt_has_prefix and not model_has_prefix:
        state = {(k[len(dotted):] if k.startswith(dotted) else k): v for k, v in state.items()}

    info = LoadingInfo()
    to_load: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key not in expected:
            if not key.endswith("position_ids") and not any(re.search(p, key) for p in ignore_unexpected):
                info.unexpected_keys.append(key)
            continue
        want = tuple(expected[key].shape)
        if tuple(tensor.shape) != want:
            info.mismatched_keys.append((key, tuple(tensor.shape), want))
            continue
        to_load[key] = tensor
    if info.mismatched_keys and not ignore_mismatched_sizes:
        detail = "; ".join(f"{k}: the checkpoint has {a}, the model expects {b}" for k, a, b in info.mismatched_keys)
        raise CheckpointError(
            f"shape mismatch for {detail} (check the config, or pass ignore_mismatched_sizes=True to re-initialize "
            "these parameters)"
        )
    info.missing_keys = [
        k for k in expected
        if k not in to_load and not any(re.search(p, k) for p in ignore_missing)
        and k not in {m[0] for m in info.mismatched_keys}
    ]
    return to_load, info
