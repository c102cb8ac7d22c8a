"""Relative positions of DeBERTa-v2: the log-bucket map and the clamped index into the position tables.

For a query at position i and a key at position j, DeBERTa-v2 looks up row

    d(i, j) = clamp(f(i - j) + S, 0, 2S - 1)

of the projected relative embeddings ``pos_key`` / ``pos_query`` (each ``[H, 2S, D]``), where S is the
attention span (``position_buckets`` if > 0, else ``max_relative_positions``) and f is the log bucket
(identity when bucketing is off). f is odd, so the content-to-position and position-to-content terms use
the same index. The float32 arithmetic below follows transformers' ``make_log_bucket_position`` operation
by operation, so the indices are bit-identical to it (checked exhaustively in tests/test_positions.py).
"""

from __future__ import annotations

import torch

__all__ = ["attention_span", "log_bucket_position", "relative_position_index", "relative_index_table"]


def attention_span(position_buckets: int, max_relative_positions: int) -> int:
    """The span S: position tables have 2S rows. ``position_buckets`` if > 0, else ``max_relative_positions``."""
    return position_buckets if position_buckets > 0 else max_relative_positions


def check_position_types(position_buckets: int, max_relative_positions: int) -> None:
    """Raise ValueError unless both settings are ints (what the ops' schemas take)."""
    for name, value in (("position_buckets", position_buckets), ("max_relative_positions", max_relative_positions)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {type(value).__name__}")


def check_position_settings(position_buckets: int, max_relative_positions: int, seq_len: int | None = None) -> None:
    """Raise ValueError for settings under which the relative-position map is undefined.

    Log bucketing (``position_buckets`` >= 2) keeps distances up to ``position_buckets // 2`` and is undefined
    beyond them unless ``max_relative_positions - 1 > position_buckets // 2`` (transformers' formula then divides
    by zero, or takes the log of a ratio below one and runs its buckets backwards). Given ``seq_len``, such
    settings are refused only where a sequence of that length has a distance beyond ``position_buckets // 2``:
    shorter ones get the plain distances, as in transformers (a tiny config with buckets 256 and 32
    positions, say).
    """
    check_position_types(position_buckets, max_relative_positions)
    if max_relative_positions < 1:
        raise ValueError(
            f"max_relative_positions must be >= 1, got {max_relative_positions} "
            "(the model replaces values < 1 by max_position_embeddings before calling the op)"
        )
    if position_buckets == 1:
        raise ValueError("position_buckets must be >= 2 (or <= 0 to turn bucketing off), got 1")
    mid = position_buckets // 2
    if position_buckets <= 0 or max_relative_positions - 1 > mid or (seq_len is not None and seq_len - 1 <= mid):
        return
    reach = "" if seq_len is None else f" (a sequence of {seq_len} tokens has distances up to {seq_len - 1})"
    raise ValueError(
        f"log bucketing needs max_relative_positions - 1 > position_buckets // 2 for distances beyond "
        f"position_buckets // 2 = {mid}, got max_relative_positions={max_relative_positions}, "
        f"position_buckets={position_buckets}{reach}"
    )


def log_bucket_position(relative_pos: torch.Tensor, position_buckets: int, max_relative_positions: int) -> torch.Tensor:
    """Map integer relative positions to log buckets (int64, same shape). Identity if bucketing is off.

    Distances below ``position_buckets // 2`` are kept; larger ones are compressed logarithmically so
    that ``max_relative_positions - 1`` lands on bucket ``position_buckets - 1``. Computed in float32.
    """
    rel = relative_pos.to(torch.int64)
    if position_buckets <= 0 or max_relative_positions <= 0:
        return rel
    mid = position_buckets // 2
    sign = torch.sign(rel)
    abs_pos = torch.where((rel < mid) & (rel > -mid), torch.full_like(rel, mid - 1), rel.abs())
    denom = torch.log(torch.tensor((max_relative_positions - 1) / mid, dtype=torch.float32, device=rel.device))
    ratio = abs_pos.to(torch.float32) / mid
    log_pos = torch.ceil(torch.log(ratio) / denom * (mid - 1)) + mid
    bucket = torch.where(abs_pos <= mid, rel.to(torch.float32), log_pos * sign.to(torch.float32))
    return bucket.to(torch.int64)


_TABLES: dict[tuple, torch.Tensor] = {}


def _build_table(length: int, position_buckets: int, max_relative_positions: int, device) -> torch.Tensor:
    span = attention_span(position_buckets, max_relative_positions)
    x = torch.arange(-(length - 1), length, dtype=torch.int64, device=device)
    d = log_bucket_position(x, position_buckets, max_relative_positions) + span
    return d.clamp_(0, 2 * span - 1).to(torch.int32)


def relative_index_table(
    seq_len: int, position_buckets: int, max_relative_positions: int, device: torch.device | str | None = None,
    reverse: bool = False,
) -> torch.Tensor:
    """The clamped index as a table over distances: int32 ``[2 * seq_len - 1]`` with
    ``table[(i - j) + seq_len - 1] = d(i, j)`` (``reverse``: the same table reversed,
    ``table[(j - i) + seq_len - 1] = d(i, j)``).

    Computed on ``device`` (as transformers computes it on the activations' device) and cached there;
    tables are built for power-of-two lengths and sliced (a reversed table's slice is the same range of the
    reversed power-of-two table).
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    if torch.compiler.is_compiling():
        table = _build_table(seq_len, position_buckets, max_relative_positions, device)
        return table.flip(0) if reverse else table
    length = 1 << (seq_len - 1).bit_length()
    key = (position_buckets, max_relative_positions, device, length, reverse)
    table = _TABLES.get(key)
    if table is None:
        table = _build_table(length, position_buckets, max_relative_positions, device)
        _TABLES[key] = table = table.flip(0) if reverse else table
    return table[length - seq_len : length + seq_len - 1]


def relative_position_index(
    seq_len: int,
    position_buckets: int = 256,
    max_relative_positions: int = 512,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The clamped bucket index d(i, j) for a sequence of ``seq_len`` tokens.

    Returns:
        int64 ``[seq_len, seq_len]``; entry (i, j) is the row of ``pos_key`` / ``pos_query`` (2S rows)
        that query i and key j use: ``clamp(f(i - j) + S, 0, 2S - 1)``.
    """
    check_position_settings(position_buckets, max_relative_positions, seq_len)
    table = relative_index_table(seq_len, position_buckets, max_relative_positions, device)
    pos = torch.arange(seq_len, device=table.device)
    return table[pos[:, None] - pos[None, :] + (seq_len - 1)].to(torch.int64)
