"""Truncation with overflow windows, [CLS]/[SEP] templates, padding and tensor conversion.

The semantics are those of the ``tokenizers`` library behind transformers' DeBERTa-v2 tokenizer, so
outputs match it row for row: the same truncation split between the two texts of a pair, the same
overflow windows and their order, the same padding of overflow rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "BatchEncoding",
    "Piece",
    "Row",
    "TruncationParams",
    "assemble",
    "build_rows",
    "normalize_padding",
    "normalize_truncation",
    "windows",
]

PADDING_STRATEGIES = ("longest", "max_length", "do_not_pad")
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second", "do_not_truncate")
LARGE_INTEGER = int(1e20)  # transformers: a model_max_length above this means "no limit"


class BatchEncoding(dict):
    """The tokenizer's output: a dict of lists or tensors, with attribute access and ``.to(device)``.

    Keys (when requested): input_ids, token_type_ids, attention_mask, special_tokens_mask,
    offset_mapping, length, overflow_to_sample_mapping.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device, *, non_blocking: bool = False) -> "BatchEncoding":
        """Move every torch tensor value to ``device`` (returns self)."""
        for key, value in self.items():
            if hasattr(value, "to") and hasattr(value, "device"):
                self[key] = value.to(device, non_blocking=non_blocking)
        return self


@dataclass(frozen=True)
class TruncationParams:
    """max_length counts the special tokens; strategy is one of TRUNCATION_STRATEGIES minus do_not_truncate."""

    max_length: int
    stride: int = 0
    strategy: str = "longest_first"
    direction: str = "right"


@dataclass
class Piece:
    """One tokenized text: ids, and character offsets when requested."""

    ids: list[int]
    offsets: list[tuple[int, int]] | None = None
    tokens: list[str] | None = None  # piece strings (only for tokenize)

    def window(self, start: int, stop: int) -> "Piece":
        if start == 0 and stop == len(self.ids):
            return self
        return Piece(self.ids[start:stop], None if self.offsets is None else self.offsets[start:stop])


@dataclass
class Row:
    """One output row before special tokens and padding: a window of the first text (and of the second)."""

    first: Piece
    second: Piece | None
    sample: int
    overflow: bool = False


def _normalize_strategy(value, name: str, when_true: str, when_false: str, allowed) -> str:
    """True -> ``when_true``, False/None -> ``when_false``, else a strategy name (or enum) from ``allowed``."""
    if value is True:
        return when_true
    if value is False or value is None:
        return when_false
    strategy = getattr(value, "value", value)
    if strategy not in allowed:
        raise ValueError(f"{name} must be True, False or one of {allowed}, got {value!r}")
    return strategy


def normalize_padding(padding) -> str:
    """False/None -> do_not_pad, True -> longest, or a strategy name."""
    return _normalize_strategy(padding, "padding", "longest", "do_not_pad", PADDING_STRATEGIES)


def normalize_truncation(truncation) -> str:
    """False/None -> do_not_truncate, True -> longest_first, or a strategy name."""
    return _normalize_strategy(truncation, "truncation", "longest_first", "do_not_truncate", TRUNCATION_STRATEGIES)


def windows(length: int, max_len: int, stride: int, direction: str) -> list[tuple[int, int]]:
    """[start, stop) windows of a sequence truncated to ``max_len``: the kept part first, then overflows.

    Consecutive windows overlap by ``stride`` tokens, as ``tokenizers``' Encoding.truncate.
    """
    if max_len >= length:
        return [(0, length)]
    if max_len == 0:
        return [(0, 0), (0, length)]
    if stride >= max_len:
        raise ValueError(
            f"stride ({stride}) must be smaller than the tokens left per sequence after truncation ({max_len}); "
            "max_length counts the special tokens"
        )
    step = max_len - stride
    out = []
    if direction == "right":
        for start in range(0, length, step):
            stop = min(start + max_len, length)
            out.append((start, stop))
            if stop == length:
                break
    else:
        for last in range(length - 1, -1, -step):
            stop = last + 1
            start = max(stop - max_len, 0)
            out.append((start, stop))
            if start == 0:
                break
    return out


def _split_budget(len_a: int, len_b: int, max_len: int) -> tuple[int, int]:
    """longest_first for a pair: how many tokens each text keeps (tokenizers' rule, ties to the first)."""
    n1, n2, swap = len_a, len_b, False
    if n1 > n2:
        n1, n2, swap = n2, n1, True
    n2 = n1 if n1 > max_len else max(n1, max_len - n1)
    if n1 + n2 > max_len:
        n1 = max_len // 2
        n2 = n1 + max_len % 2
    return (n2, n1) if swap else (n1, n2)


def truncate(
    first: Piece, second: Piece | None, params: TruncationParams, budget: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]] | None]:
    """Windows of the first (and second) text so that the texts fit in ``budget`` tokens together."""
    len_a = len(first.ids)
    len_b = len(second.ids) if second is not None else 0
    whole_a = [(0, len_a)]
    whole_b = [(0, len_b)] if second is not None else None
    if budget == 0:
        return (
            windows(len_a, 0, params.stride, params.direction),
            None if second is None else windows(len_b, 0, params.stride, params.direction),
        )
    excess = len_a + len_b - budget
    if excess <= 0:
        return whole_a, whole_b
    if params.strategy == "longest_first":
        if second is None:
            return windows(len_a, budget, params.stride, params.direction), None
        keep_a, keep_b = _split_budget(len_a, len_b, budget)
        return (
            windows(len_a, keep_a, params.stride, params.direction),
            windows(len_b, keep_b, params.stride, params.direction),
        )
    if params.strategy == "only_second" and second is None:
        raise ValueError("truncation='only_second' needs a second text (text_pair)")
    target = len_a if params.strategy == "only_first" else len_b
    if target <= excess:
        raise ValueError(
            f"truncation={params.strategy!r}: the text to truncate has {target} tokens, fewer than the "
            f"{excess} that must go to respect max_length={params.max_length}"
        )
    cut = windows(target, target - excess, params.stride, params.direction)
    return (cut, whole_b) if params.strategy == "only_first" else (whole_a, cut)


def build_rows(
    firsts: Sequence[Piece],
    seconds: Sequence[Piece] | None,
    params: TruncationParams | None,
    n_special: int,
    keep_overflow: bool,
) -> list[Row]:
    """Truncate every input and expand overflow windows into rows (in tokenizers' order).

    For a pair with windows a0..ak and b0..bm the rows are (a0, b0), then (ai, b0), (ai, b1..bm) for each
    i >= 1, then (a0, bj) for j >= 1; without keep_overflow only (a0, b0).
    """
    rows: list[Row] = []
    budget = None
    if params is not None:
        budget = params.max_length - n_special
        if budget < 0:
            raise ValueError(
                f"max_length={params.max_length} leaves no room for the {n_special} special tokens of each row"
            )
    for sample, first in enumerate(firsts):
        second = seconds[sample] if seconds is not None else None
        if params is None:
            rows.append(Row(first, second, sample))
            continue
        wins_a, wins_b = truncate(first, second, params, budget)
        pieces_a = [first.window(*w) for w in wins_a]
        if second is None:
            rows.append(Row(pieces_a[0], None, sample))
            if keep_overflow:
                rows.extend(Row(p, None, sample, True) for p in pieces_a[1:])
            continue
        pieces_b = [second.window(*w) for w in wins_b]
        rows.append(Row(pieces_a[0], pieces_b[0], sample))
        if keep_overflow:
            for a in pieces_a[1:]:
                rows.extend(Row(a, b, sample, True) for b in pieces_b)
            rows.extend(Row(pieces_a[0], b, sample, True) for b in pieces_b[1:])
    return rows


def _pad_target(lengths: list[int], strategy: str, max_length: int | None, multiple: int | None) -> int | None:
    if strategy == "do_not_pad":
        return None
    target = max(lengths, default=0) if strategy == "longest" else max_length
    if multiple and target % multiple:
        target += multiple - target % multiple
    return target


def assemble(
    rows: list[Row],
    *,
    cls_id: int,
    sep_id: int,
    add_special_tokens: bool,
    pad_id: int | None,
    pad_type_id: int,
    padding: str,
    max_length: int | None,
    pad_to_multiple_of: int | None,
    padding_side: str,
    return_tensors: str | None,
    return_token_type_ids: bool,
    return_attention_mask: bool,
    return_special_tokens_mask: bool,
    return_offsets_mapping: bool,
    return_length: bool,
    return_overflow_mapping: bool,
) -> BatchEncoding:
    """Add [CLS]/[SEP], pad, and lay the rows out as lists or as "pt"/"np" tensors."""
    ids, n_first = [], []
    for row in rows:
        a, b = row.first.ids, (row.second.ids if row.second is not None else None)
        if add_special_tokens:
            ids.append([cls_id, *a, sep_id] if b is None else [cls_id, *a, sep_id, *b, sep_id])
            n_first.append(len(a) + 2)
        else:
            ids.append(list(a) if b is None else [*a, *b])
            n_first.append(len(a))
    lengths = [len(x) for x in ids]
    # As tokenizers: the batch-longest target comes from the kept rows; overflow rows are padded to it.
    target = _pad_target([n for n, row in zip(lengths, rows) if not row.overflow], padding, max_length, pad_to_multiple_of)
    if target is not None and pad_id is None:
        raise ValueError("padding needs a pad token, and this tokenizer has none")
    opts = {
        "add_special_tokens": add_special_tokens,
        "pad_id": pad_id,
        "pad_type_id": pad_type_id,
        "padding_side": padding_side,
        "return_token_type_ids": return_token_type_ids,
        "return_attention_mask": return_attention_mask,
        "return_special_tokens_mask": return_special_tokens_mask,
        "return_offsets_mapping": return_offsets_mapping,
        "return_length": return_length,
    }
    layout = _as_arrays if return_tensors is not None else _as_lists
    out = layout(rows, ids, lengths, n_first, target, opts)
    if return_overflow_mapping:
        out["overflow_to_sample_mapping"] = [row.sample for row in rows]
    if return_tensors is not None:
        out = {key: _to_tensor(np.asarray(value, dtype=np.int64), return_tensors) for key, value in out.items()}
    return BatchEncoding(out)


def _special_mask(a_len: int, b_len: int | None, add_special: bool) -> list[int]:
    if not add_special:
        return [0] * (a_len + (b_len or 0))
    mask = [1] + [0] * a_len + [1]
    if b_len is not None:
        mask += [0] * b_len + [1]
    return mask


def _row_offsets(row: Row, add_special: bool) -> list[tuple[int, int]]:
    """Offsets of one row; special tokens get (0, 0)."""
    offsets = [(0, 0), *row.first.offsets, (0, 0)] if add_special else list(row.first.offsets)
    if row.second is not None:
        offsets += row.second.offsets
        if add_special:
            offsets.append((0, 0))
    return offsets


def _as_lists(rows, ids, lengths, n_first, target, opts) -> dict[str, list]:
    add_special = opts["add_special_tokens"]
    left = opts["padding_side"] == "left"
    out: dict[str, list] = {"input_ids": []}
    if opts["return_token_type_ids"]:
        out["token_type_ids"] = []
    if opts["return_attention_mask"]:
        out["attention_mask"] = []
    if opts["return_special_tokens_mask"]:
        out["special_tokens_mask"] = []
    if opts["return_offsets_mapping"]:
        out["offset_mapping"] = []
    if opts["return_length"]:
        out["length"] = []
    pad_id, pad_type = opts["pad_id"], opts["pad_type_id"]

    def pad(values: list, fill) -> list:
        missing = target - len(values) if target is not None else 0
        if missing <= 0:
            return values
        return [fill] * missing + values if left else values + [fill] * missing

    for row, row_ids, length, first_len in zip(rows, ids, lengths, n_first):
        out["input_ids"].append(pad(row_ids, pad_id))
        if "token_type_ids" in out:
            out["token_type_ids"].append(pad([0] * first_len + [1] * (length - first_len), pad_type))
        if "attention_mask" in out:
            out["attention_mask"].append(pad([1] * length, 0))
        if "special_tokens_mask" in out:
            b_len = len(row.second.ids) if row.second is not None else None
            out["special_tokens_mask"].append(pad(_special_mask(len(row.first.ids), b_len, add_special), 1))
        if "offset_mapping" in out:
            out["offset_mapping"].append(pad(_row_offsets(row, add_special), (0, 0)))
        if "length" in out:
            out["length"].append(max(length, target or 0))
    return out


def _as_arrays(rows, ids, lengths, n_first, target, opts) -> dict[str, np.ndarray]:
    """Vectorized layout: one flat fill per column instead of per-row Python lists."""
    n_rows = len(rows)
    padded = {max(n, target or 0) for n in lengths}
    if len(padded) > 1:
        raise ValueError(
            "cannot stack rows of different lengths into a tensor: pass padding=True (or 'max_length') "
            "and/or truncation=True"
        )
    width = padded.pop() if padded else (target or 0)
    length = np.asarray(lengths, dtype=np.int64)
    columns = np.arange(width, dtype=np.int64)
    left = opts["padding_side"] == "left"
    pos = columns[None, :] - (width - length)[:, None] if left else np.broadcast_to(columns, (n_rows, width))
    real = (pos >= 0) & (pos < length[:, None])
    out: dict[str, np.ndarray] = {}
    input_ids = np.full((n_rows, width), opts["pad_id"] if opts["pad_id"] is not None else 0, dtype=np.int64)
    input_ids[real] = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(length.sum()))
    out["input_ids"] = input_ids
    first = np.asarray(n_first, dtype=np.int64)[:, None]
    if opts["return_token_type_ids"]:
        types = np.where(real, (pos >= first).astype(np.int64), opts["pad_type_id"])
        out["token_type_ids"] = types
    if opts["return_attention_mask"]:
        out["attention_mask"] = real.astype(np.int64)
    if opts["return_special_tokens_mask"]:
        special = ~real
        if opts["add_special_tokens"]:
            has_pair = np.asarray([row.second is not None for row in rows])[:, None]
            special = special | (pos == 0) | (pos == length[:, None] - 1) | (has_pair & (pos == first - 1))
        out["special_tokens_mask"] = special.astype(np.int64)
    if opts["return_offsets_mapping"]:
        offsets = np.zeros((n_rows, width, 2), dtype=np.int64)
        flat = [span for row in rows for span in _row_offsets(row, opts["add_special_tokens"])]
        if flat:
            offsets[real] = np.asarray(flat, dtype=np.int64)
        out["offset_mapping"] = offsets
    if opts["return_length"]:
        out["length"] = np.maximum(length, target or 0)
    return out


def _to_tensor(array: np.ndarray, return_tensors: str):
    if return_tensors == "np":
        return array
    import torch

    return torch.from_numpy(np.ascontiguousarray(array))
