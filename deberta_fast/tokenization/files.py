"""Tokenizer directories in the layouts transformers reads and writes.

* transformers 4.x / the DeBERTa hub repos: spm.model, tokenizer_config.json, special_tokens_map.json,
  added_tokens.json (and tokenizer.json from the fast tokenizer).
* transformers 5.x: tokenizer.json and tokenizer_config.json only; the SentencePiece model is rebuilt
  from tokenizer.json's Unigram vocabulary (``proto_from_tokenizer_json``).

Every file is written whole or not at all (temporary file in the same directory, then os.replace).
"""

from __future__ import annotations

import base64
import json
import os
import warnings
from typing import Any

import sentencepiece

from ..io import atomic_write_bytes
from .added_tokens import SPECIAL_TOKEN_NAMES, AddedToken, as_added_token
from .offsets import SPACE_PIECE
from .spm_proto import CONTROL, NORMAL, UNKNOWN, USER_DEFINED, NormalizerSpec, ProtoError, build_model_proto, normalizer_of_model

__all__ = [
    "ADDED_TOKENS_FILE",
    "SPECIAL_TOKENS_MAP_FILE",
    "TOKENIZER_CONFIG_FILE",
    "TOKENIZER_FILE",
    "VOCAB_FILE",
    "atomic_write",
    "json_bytes",
    "read_pretrained",
    "tokenizer_json",
]

VOCAB_FILE = "spm.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"
TOKENIZER_FILE = "tokenizer.json"

# tokenizer_config.json keys the tokenizer reads or writes itself; every other key is kept and written back.
OWN_CONFIG_KEYS = {
    *SPECIAL_TOKEN_NAMES,
    "do_lower_case",
    "split_by_punct",
    "additional_special_tokens",
    "extra_special_tokens",
    "added_tokens_decoder",
    "model_max_length",
    "padding_side",
    "truncation_side",
    "clean_up_tokenization_spaces",
    "split_special_tokens",
    "tokenizer_class",
    "name_or_path",
    "vocab_file",
    "tokenizer_file",
    "special_tokens_map_file",
    "auto_map",
}
_CONFIG_ARGS = (
    "do_lower_case",
    "split_by_punct",
    "model_max_length",
    "padding_side",
    "truncation_side",
    "clean_up_tokenization_spaces",
    "split_special_tokens",
)


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (temporary file in the same directory, then rename)."""
    atomic_write_bytes(path, data)


def json_bytes(obj: Any, indent: int | None = 2) -> bytes:
    """UTF-8 JSON as transformers writes it (sorted keys when indented, non-ASCII kept)."""
    return (json.dumps(obj, indent=indent, sort_keys=indent is not None, ensure_ascii=False) + "\n").encode("utf-8")


def read_json(path: str) -> Any:
    """Parse a JSON file; a malformed file raises ValueError naming it."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def token_value(value: Any) -> str | AddedToken:
    """A special token as saved in JSON: a string, or an AddedToken dict (with or without "__type")."""
    if isinstance(value, dict):
        return as_added_token({k: v for k, v in value.items() if k != "__type"})
    return value


def read_pretrained(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a tokenizer directory: (DebertaV2Tokenizer keyword arguments, other tokenizer_config keys).

    Needs spm.model, or else a Unigram tokenizer.json to rebuild it from. Added tokens come from
    tokenizer_config.json's added_tokens_decoder or, in older layouts, from special_tokens_map.json,
    added_tokens.json and tokenizer.json's added tokens (the precedence transformers uses).
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no tokenizer directory or spm.model file at {path!r}")

    def file(name: str) -> str | None:
        candidate = os.path.join(path, name)
        return candidate if os.path.isfile(candidate) else None

    config = read_json(file(TOKENIZER_CONFIG_FILE)) if file(TOKENIZER_CONFIG_FILE) else {}
    if not isinstance(config, dict):
        raise ValueError(f"{file(TOKENIZER_CONFIG_FILE)} must hold a JSON object")
    tokenizer_file = read_json(file(TOKENIZER_FILE)) if file(TOKENIZER_FILE) else None
    args: dict[str, Any] = {}
    if file(VOCAB_FILE):
        args["vocab_file"] = file(VOCAB_FILE)
    elif tokenizer_file is not None:
        args["model_proto"] = proto_from_tokenizer_json(tokenizer_file, file(TOKENIZER_FILE), config)
    else:
        raise FileNotFoundError(f"{path!r} has neither {VOCAB_FILE} nor {TOKENIZER_FILE}")

    for name in SPECIAL_TOKEN_NAMES:
        if name in config:
            args[name] = token_value(config[name])
    for key in _CONFIG_ARGS:
        if config.get(key) is not None:
            args[key] = config[key]
    extra = config.get("additional_special_tokens") or config.get("extra_special_tokens")
    if isinstance(extra, dict):  # transformers 5.x: named model-specific tokens
        extra = list(extra.values())
    if extra:
        args["additional_special_tokens"] = [token_value(t) for t in extra]

    decoder = config.get("added_tokens_decoder")
    if decoder is None:  # older layouts
        if file(SPECIAL_TOKENS_MAP_FILE):
            special_map = read_json(file(SPECIAL_TOKENS_MAP_FILE))
            for name in SPECIAL_TOKEN_NAMES:
                if name not in config and special_map.get(name) is not None:
                    args[name] = token_value(special_map[name])
            if "additional_special_tokens" not in args and special_map.get("additional_special_tokens"):
                args["additional_special_tokens"] = [token_value(t) for t in special_map["additional_special_tokens"]]
        decoder = {}
        if file(ADDED_TOKENS_FILE):
            specials = {str(v) for k, v in args.items() if k in SPECIAL_TOKEN_NAMES and v}
            for content, index in read_json(file(ADDED_TOKENS_FILE)).items():
                is_special = content in specials
                decoder[int(index)] = AddedToken(content, normalized=not is_special, special=is_special)
        if tokenizer_file is not None:
            for entry in tokenizer_file.get("added_tokens", []):
                decoder[int(entry["id"])] = as_added_token(entry)
    args["added_tokens_decoder"] = {int(k): as_added_token(v) for k, v in decoder.items()}
    if config.get("add_prefix_space") is False:
        warnings.warn("add_prefix_space=False is not supported: SentencePiece prefixes every text with '▁'", stacklevel=3)
    return args, {k: v for k, v in config.items() if k not in OWN_CONFIG_KEYS}


def tokenizer_json(
    *,
    pieces: list[str],
    scores: list[float],
    unk_id: int,
    added: dict[int, AddedToken],
    charsmap: bytes,
    do_lower_case: bool,
    split_by_punct: bool,
    cls: tuple[str, int],
    sep: tuple[str, int],
) -> dict[str, Any]:
    """tokenizer.json: what transformers' fast tokenizer loads (without protobuf, which spm.model needs).

    The normalizer carries the model file's SentencePiece rules (Precompiled), as transformers 4.x's
    converter wrote it; transformers 5.x rebuilds its own normalizer and takes the vocabulary only.
    """
    normalizers: list[dict[str, Any]] = [{"type": "Lowercase"}] if do_lower_case else []
    normalizers.append({"type": "Strip", "strip_left": True, "strip_right": True})
    if charsmap:
        normalizers.append({"type": "Precompiled", "precompiled_charsmap": base64.b64encode(charsmap).decode()})
    normalizers.append({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "})
    metaspace = {"type": "Metaspace", "replacement": SPACE_PIECE, "prepend_scheme": "always", "split": True}
    pre_tokenizers = [{"type": "Punctuation", "behavior": "Isolated"}] if split_by_punct else []
    (cls_token, cls_id), (sep_token, sep_id) = cls, sep

    def special(name: str, type_id: int) -> dict:
        return {"SpecialToken": {"id": name, "type_id": type_id}}

    def sequence(name: str, type_id: int) -> dict:
        return {"Sequence": {"id": name, "type_id": type_id}}

    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": i, **t.to_dict()} for i, t in sorted(added.items())],
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [*pre_tokenizers, metaspace]},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [special(cls_token, 0), sequence("A", 0), special(sep_token, 0)],
            "pair": [
                special(cls_token, 0),
                sequence("A", 0),
                special(sep_token, 0),
                sequence("B", 1),
                special(sep_token, 1),
            ],
            "special_tokens": {
                cls_token: {"id": cls_token, "ids": [cls_id], "tokens": [cls_token]},
                sep_token: {"id": sep_token, "ids": [sep_id], "tokens": [sep_token]},
            },
        },
        "decoder": dict(metaspace),
        "model": {
            "type": "Unigram",
            "unk_id": unk_id,
            "vocab": [[piece, score] for piece, score in zip(pieces, scores)],
            "byte_fallback": False,
        },
    }


def proto_from_tokenizer_json(tokenizer_file: dict, path: str, config: dict) -> bytes:
    """Rebuild a SentencePiece Unigram model from a transformers tokenizer.json (no spm.model saved).

    Piece types come from the file's added tokens (special -> control, other -> user defined); the
    normalization rules from its Precompiled normalizer, else SentencePiece's built-in nmt_nfkc, which
    every DeBERTa-v2/v3 model was trained with.
    """
    model = tokenizer_file.get("model") or {}
    if model.get("type") != "Unigram" or not model.get("vocab"):
        raise ValueError(f"{path}: only a Unigram tokenizer.json can be turned into a SentencePiece model")
    unk_id = model.get("unk_id")
    if unk_id is None:
        raise ValueError(f"{path}: the Unigram model has no unk_id")
    added = {int(entry["id"]): entry for entry in tokenizer_file.get("added_tokens", [])}
    pieces = []
    for index, (piece, score) in enumerate(model["vocab"]):
        kind = NORMAL
        if index == unk_id:
            kind = UNKNOWN
        elif index in added and added[index].get("content") == piece:
            kind = CONTROL if added[index].get("special") else USER_DEFINED
        pieces.append((piece, float(score), kind))
    charsmap = _find_precompiled(tokenizer_file.get("normalizer"))
    if charsmap is None:
        charsmap = _builtin_charsmap("nmt_nfkc", path)
    first_index: dict[str, int] = {}
    for index, (piece, _, _) in enumerate(pieces):
        first_index.setdefault(piece, index)

    def control_index(name: str, default: str) -> int:
        index = first_index.get(str(token_value(config.get(name, default))), -1)
        return index if index >= 0 and pieces[index][2] == CONTROL else -1

    special_ids = {
        "unk": unk_id,
        "bos": control_index("bos_token", "[CLS]"),
        "eos": control_index("eos_token", "[SEP]"),
        "pad": control_index("pad_token", "[PAD]"),
    }
    normalizer = NormalizerSpec(name="nmt_nfkc", precompiled_charsmap=charsmap)
    return build_model_proto(pieces, special_ids=special_ids, normalizer=normalizer)


def _builtin_charsmap(rule_name: str, path: str) -> bytes:
    """The compiled normalization rules sentencepiece ships under ``rule_name``."""
    try:
        proto = sentencepiece.SentencePieceNormalizer(rule_name=rule_name).serialized_model_proto()
        charsmap = normalizer_of_model(proto).precompiled_charsmap
    except (AttributeError, TypeError, UnicodeDecodeError, RuntimeError, ProtoError):
        charsmap = b""  # sentencepiece < 0.2.1 cannot hand its built-in rules out
    if not charsmap:
        raise ValueError(
            f"{path}: rebuilding spm.model needs sentencepiece>=0.2.1 (for its built-in {rule_name} rules); "
            "upgrade sentencepiece or put the model's spm.model in the directory"
        )
    return charsmap


def _find_precompiled(normalizer: Any) -> bytes | None:
    if not isinstance(normalizer, dict):
        return None
    if normalizer.get("type") == "Precompiled" and normalizer.get("precompiled_charsmap"):
        return base64.b64decode(normalizer["precompiled_charsmap"])
    for child in normalizer.get("normalizers") or ():
        found = _find_precompiled(child)
        if found is not None:
            return found
    return None
