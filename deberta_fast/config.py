"""DebertaV2Config: every field transformers' config.json carries for DeBERTa-v2/v3, plus unknown keys kept."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from .io import atomic_write_text
from .positions import attention_span

__all__ = ["DebertaV2Config", "CONFIG_NAME"]

logger = logging.getLogger("deberta_fast")

CONFIG_NAME = "config.json"

# Field -> default, as transformers' DebertaV2Config and the attributes its modeling code reads with getattr.
_DEFAULTS: dict[str, Any] = {
    "vocab_size": 128100,
    "hidden_size": 1536,
    "num_hidden_layers": 24,
    "num_attention_heads": 24,
    "intermediate_size": 6144,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 0,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-7,
    "relative_attention": False,
    "max_relative_positions": -1,
    "position_buckets": -1,
    "pad_token_id": 0,
    "bos_token_id": None,
    "eos_token_id": None,
    "position_biased_input": True,
    "pos_att_type": None,
    "share_att_key": False,
    "norm_rel_ebd": "none",
    "conv_kernel_size": 0,
    "conv_groups": 1,
    "conv_act": "tanh",
    "embedding_size": None,
    "attention_head_size": None,
    "pooler_hidden_size": None,
    "pooler_dropout": 0.0,
    "pooler_hidden_act": "gelu",
    "cls_dropout": None,
    "legacy": True,
    "tie_word_embeddings": True,
    # fine-tuning fields shared by all transformers configs
    "id2label": None,
    "label2id": None,
    "problem_type": None,
    "output_hidden_states": False,
    "output_attentions": False,
    "return_dict": True,
    "dtype": None,
    "architectures": None,
    # deberta_fast's own: which attention backend the model uses, and what fully padded rows get
    "attn_backend": "auto",
    "masked_rows": "uniform",
}
# attn_backend is a runtime choice for this machine: read from config.json when present, never written.
# masked_rows changes the math, so it is written when it differs from transformers' behaviour.
_NOT_WRITTEN = ("attn_backend",)
_WRITTEN_IF_NOT_DEFAULT = {"masked_rows": "uniform"}
# transformers reads these with getattr(config, name, default): a null in config.json would break it.
_OMITTED_IF_NONE = ("embedding_size", "attention_head_size", "cls_dropout")
_PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")


class DebertaV2Config:
    """Configuration of a DeBERTa-v2/v3 model, read from and written to transformers' ``config.json``.

    Every key transformers writes is an attribute; keys this class does not know are kept as attributes
    and written back unchanged. ``pos_att_type`` accepts a list or the ``"p2c|c2p"`` string form, read as
    transformers reads it: the string lower-cased and split at ``|``, a list's entries as they are; the model
    uses the entries ``"c2p"`` and ``"p2c"`` and, like transformers, ignores any other (with a warning).
    ``num_labels`` is derived from ``id2label`` (default 2 labels), as in transformers.

    deberta_fast adds ``attn_backend`` (``"auto"``, ``"torch"``, ``"triton"``, ``"cuda"``) and
    ``masked_rows`` (``"uniform"`` as transformers 5.x, ``"zero"`` as DeBERTa's XSoftmax).
    """

    model_type = "deberta-v2"

    def __init__(self, **kwargs: Any):
        num_labels = kwargs.pop("num_labels", None)
        torch_dtype = kwargs.pop("torch_dtype", None)
        kwargs.pop("model_type", None)
        kwargs.pop("transformers_version", None)
        values = copy.deepcopy(_DEFAULTS)
        values.update(kwargs)
        if values["dtype"] is None and torch_dtype is not None:
            values["dtype"] = torch_dtype
        self.__dict__.update(values)
        self.pos_att_type = self._parse_pos_att_type(self.pos_att_type)
        if self.pooler_hidden_size is None:
            self.pooler_hidden_size = self.hidden_size
        if isinstance(self.dtype, torch.dtype):
            self.dtype = str(self.dtype).removeprefix("torch.")
        if self.id2label is None:
            self.num_labels = 2 if num_labels is None else num_labels
        else:
            self.id2label = {int(k): v for k, v in self.id2label.items()}
            if num_labels is not None and num_labels != len(self.id2label):
                self.num_labels = num_labels
        if self.label2id is None:
            self.label2id = {v: k for k, v in self.id2label.items()}
        self.validate()

    @staticmethod
    def _parse_pos_att_type(value) -> list:
        """As transformers: a string lower-cased, split at ``|`` and stripped; a list's entries unchanged (its
        modeling code matches them exactly, so ``["C2P"]`` names no term there, nor here)."""
        if value is None:
            return []
        if isinstance(value, str):
            return [x.strip() for x in value.lower().split("|")]
        return list(value)

    # --- derived values --------------------------------------------------------------------

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"num_labels must be a positive int, got {n!r}")
        self.id2label = {i: f"LABEL_{i}" for i in range(n)}
        self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def head_size(self) -> int:
        """Per-head dimension D (``attention_head_size`` if set, else hidden_size // num_attention_heads)."""
        return self.attention_head_size or self.hidden_size // self.num_attention_heads

    @property
    def resolved_max_relative_positions(self) -> int:
        """max_relative_positions, or max_position_embeddings when it is < 1 (as transformers does)."""
        return self.max_relative_positions if self.max_relative_positions >= 1 else self.max_position_embeddings

    @property
    def attention_span(self) -> int:
        """S: the position tables have 2S rows."""
        return attention_span(self.position_buckets, self.resolved_max_relative_positions)

    @property
    def torch_dtype(self) -> torch.dtype | None:
        return getattr(torch, self.dtype) if isinstance(self.dtype, str) else None

    def validate(self) -> None:
        """Raise ValueError for settings the model cannot be built with."""
        if self.hidden_size % self.num_attention_heads != 0 and self.attention_head_size is None:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) is not a multiple of num_attention_heads ({self.num_attention_heads})"
            )
        ignored = [t for t in self.pos_att_type if t not in ("c2p", "p2c", "", "none")]
        if ignored:
            logger.warning(
                "pos_att_type %r: the model uses the entries 'c2p' and 'p2c' only (exact, lower case, as in "
                "transformers) and ignores %r", self.pos_att_type, ignored,
            )
        if self.problem_type not in _PROBLEM_TYPES:
            raise ValueError(f"problem_type must be one of {_PROBLEM_TYPES}, got {self.problem_type!r}")
        if self.problem_type == "single_label_classification" and self.num_labels == 1:
            raise ValueError('problem_type="single_label_classification" needs num_labels > 1')
        if self.masked_rows not in ("uniform", "zero"):
            raise ValueError(f"masked_rows must be 'uniform' or 'zero', got {self.masked_rows!r}")
        if not isinstance(self.attn_backend, str):
            raise ValueError(f"attn_backend must be a string, got {self.attn_backend!r}")

    # --- (de)serialization -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """All fields (known and unknown) as JSON-ready values, in transformers' key names."""
        out = copy.deepcopy(self.__dict__)
        for key in _NOT_WRITTEN:
            out.pop(key, None)
        for key, default in _WRITTEN_IF_NOT_DEFAULT.items():
            if out.get(key) == default:
                out.pop(key, None)
        for key in _OMITTED_IF_NONE:
            if out.get(key) is None:
                out.pop(key, None)
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["model_type"] = self.model_type
        return dict(sorted(out.items()))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> "DebertaV2Config":
        model_type = data.get("model_type")
        if model_type not in (None, cls.model_type):
            raise ValueError(f"config has model_type {model_type!r}, expected {cls.model_type!r}")
        return cls(**{**data, **overrides})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> "DebertaV2Config":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no {path.name} at {path}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object")
        return cls.from_dict(data, **overrides)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> "DebertaV2Config":
        """Read ``config.json`` from a model directory (or the path of the JSON file itself)."""
        path = Path(path)
        return cls.from_json_file(path / CONFIG_NAME if path.is_dir() else path, **overrides)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` into ``directory`` (created if needed), atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / CONFIG_NAME
        atomic_write_text(target, self.to_json_string())
        return target

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DebertaV2Config) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"
