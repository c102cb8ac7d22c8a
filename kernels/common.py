"""What the disentangled-attention kernels share: tile helpers, the position geometry, autotune configs.

Position geometry. For the pair (query i, key j) the kernels use the row d(i, j) = table[i - j + N - 1] of
the projected position tables (``deberta_fast.positions.relative_index_table``, bit-identical to
transformers). Far from the diagonal the index clamps: d = 2S - 1 for every i - j >= r_hi and d = 0 for
every i - j <= -r_lo (r_hi, r_lo read off the table once per setting and device). A tile whose pairs all
lie beyond one of these distances is *saturated*: its c2p term is one value per query row and its p2c
term one value per key column, so it skips the gathers and costs about what a plain attention tile
costs. Only *band* tiles, crossing -r_lo < i - j < r_hi, gather through the table.

Band bias (band mode "bias": DEBERTA_FAST_TRITON_BAND=bias, or :func:`triton_variant`'s choice). A band pair
gathers three values (its index, C2P[i, d], P2C[j, d]) and one of the last two is uncoalesced (its row, the query
or the key, changes across a warp's threads). In this mode :func:`band_bias` first stores C2P[i, d] + P2C[j, d] of
every band pair once, in a skewed layout (:class:`BiasLayout`: pair (i, j) at ``i * row + j + offset``) where a
query row's keys are contiguous, and the band tiles of the forward and both backward kernels read it with one
coalesced load per pair.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..backends import measured
from ..backends.selection import device_capability, nearest_entries, nearest_length
from ..positions import attention_span, relative_index_table
from .tuned import FASTEST

# Decided when the kernels are defined, as triton.jit decides: TRITON_INTERPRET=1 runs them on the CPU.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Tile kinds (tl.constexpr MODE of the inner loops).
PLAIN = tl.constexpr(0)  # no position terms
BAND = tl.constexpr(1)  # gather c2p / p2c through the table
SAT_HI = tl.constexpr(2)  # every pair has i - j >= r_hi: row 2S - 1
SAT_LO = tl.constexpr(3)  # every pair has i - j <= -r_lo: row 0
INNER = tl.constexpr(4)  # a band tile whose pairs all lie inside the band and the sequence (common.inner_band)

LOG2E = 1.4426950408889634  # host side (scale * LOG2E)
K_LOG2E = tl.constexpr(LOG2E)  # the same inside kernels (jit globals must be constexpr)
K_LN2 = tl.constexpr(0.6931471805599453)

# Saturation distances are a property of (buckets, max_rel, device): one host read each, then cached.
_SATURATION: dict[tuple, tuple[int, int]] = {}
_MIN_TABLE = 1 << 16  # the index is guaranteed bit-identical to transformers for |i - j| < 65536


def _triton_version() -> tuple[int, int]:
    try:
        return tuple(int(part) for part in triton.__version__.split(".")[:2])
    except ValueError:  # a development build: assume recent
        return (99, 0)


# Which axis of a band tile the gathers' threads run along. The c2p / p2c gathers' addresses have no known
# contiguity, and Triton's coalescing pass lays such loads out with a warp's threads along the tile's fast axis from
# Triton 3.7 on, along its slow axis in 3.6 (sm_90 layouts of all three kernels, compile_check). The index load,
# contiguous along whichever axis its index grows, must get the same layout, or every band tile moves two tiles of
# 64-bit addresses through shared memory (compile_check.pointer_layout_conversions: 0 with the orientation below,
# 2 per band loop with the other, on Triton 3.6, 3.7.1, 3.8 and 3.9). So the index read on the kernel's tile grows
# along its fast axis from 3.7 on, along its slow axis before (``table_rev``, index j - i, grows along keys; ``table``,
# i - j, along queries).
#
# A gather is cheap when a warp's threads run along the index its addresses are dense in: C2P[i, d(i - j)] along
# keys, P2C[j, d(i - j)] along queries (consecutive distances, consecutive or equal rows d); along the other index
# each thread of the warp reads another row (one 32-byte sector each). On one tile one of the two terms is read the
# dense way and the other not (Triton 3.6: the forward's and dQ's c2p, dK/dV's p2c). Band mode "oriented" gathers
# each term on a tile oriented for it, the other term's on the transposed tile (:func:`position_bias`), with its
# own index load from the table that grows along that tile's thread axis.
INDEX_ALONG_FAST_AXIS = _triton_version() >= (3, 7)


def index_table(geometry: "PositionGeometry | None", keys_fast: bool,
                absent: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(table, keys_on_thread_axis) for the band tiles of a kernel whose tile has keys (``keys_fast``: the forward
    and dQ kernels) or queries (dK/dV) on its fast axis: whether this Triton's gathers run along the tile's key
    axis (the kernels' INDEX_REVERSED; band mode "oriented" then gathers the c2p term on the kernel's tile and the
    p2c term on its transpose, else the other way round) and the table whose index grows along that axis:
    :attr:`PositionGeometry.table_rev` (index j - i + N - 1, growing along keys) or ``table`` (i - j + N - 1),
    both views of ``tables``, where the oriented mode finds the other one; ``absent`` stands in without position
    terms."""
    keys_on_threads = keys_fast == INDEX_ALONG_FAST_AXIS
    if geometry is None:
        return absent, keys_on_threads
    return (geometry.table_rev if keys_on_threads else geometry.table), keys_on_threads


@dataclass(frozen=True)
class PositionGeometry:
    """The relative-position index of one sequence length as the kernels read it.

    ``table``: int32 ``[2N - 1]``, ``table[i - j + N - 1] = d(i, j)`` (its index grows along queries);
    ``table_rev`` the same reversed, ``table_rev[j - i + N - 1] = d(i, j)`` (growing along keys); ``tables`` both
    in one buffer, ``[table, table_rev]``, so a kernel given one finds the other (:func:`position_bias`). Pairs with
    ``i - j >= r_hi`` use row 2S - 1, pairs with ``i - j <= -r_lo`` row 0 (both clamped to N, so r_hi = N means
    "never"). The band ``-r_lo < i - j < r_hi`` has ``width = r_hi + r_lo - 1`` distances; column ``c`` of a band
    buffer holds the distance ``i - j = c - (r_lo - 1)``, whose row is ``band_index[c]``.
    """

    table: torch.Tensor
    r_hi: int
    r_lo: int
    table_rev: torch.Tensor  # ``table`` reversed: ``table_rev[j - i + N - 1] = d(i, j)``
    tables: torch.Tensor  # int32 ``[2 (2N - 1)]``: ``table`` then ``table_rev`` (``table`` and ``table_rev`` view it)

    @property
    def width(self) -> int:
        return self.r_hi + self.r_lo - 1

    @property
    def band_index_view(self) -> torch.Tensor:
        """The position row of each band distance, int32 ``[W]``: a view of ``table``."""
        n = (self.table.numel() + 1) // 2
        return self.table[n - self.r_lo : n - 1 + self.r_hi]

    @property
    def band_index(self) -> torch.Tensor:
        return self.band_index_view.long()


def _saturation(position_buckets: int, max_relative_positions: int, device: torch.device, length: int):
    key = (position_buckets, max_relative_positions, device, length)
    if key not in _SATURATION:
        top = 2 * attention_span(position_buckets, max_relative_positions) - 1
        table = relative_index_table(length, position_buckets, max_relative_positions, device)
        after = torch.arange(1, length + 1, device=device)  # x + 1 for the distance x = 0 .. length - 1
        pos = table[length - 1 :]  # d(x)
        neg = table[:length].flip(0)  # d(-x)
        r_hi = torch.where(pos != top, after, 0).max()
        r_lo = torch.where(neg != 0, after, 0).max()
        # The one host read, cached. A side that never clamps within the table gets r = length >= N.
        _SATURATION[key] = tuple(torch.stack([r_hi, r_lo]).tolist())
    return _SATURATION[key]


def position_geometry(seq_len: int, position_buckets: int, max_relative_positions: int, device) -> PositionGeometry:
    """The :class:`PositionGeometry` of ``seq_len`` tokens on ``device``, cached (every forward and backward
    asks, twice per step)."""
    return _position_geometry(seq_len, position_buckets, max_relative_positions, torch.device(device))


@functools.lru_cache(maxsize=256)
def _position_geometry(seq_len: int, position_buckets: int, max_relative_positions: int, device) -> PositionGeometry:
    length = max(_MIN_TABLE, 1 << (seq_len - 1).bit_length())
    r_hi, r_lo = _saturation(position_buckets, max_relative_positions, device, length)
    tables = torch.cat([relative_index_table(seq_len, position_buckets, max_relative_positions, device, reverse=rev)
                        for rev in (False, True)])
    table, table_rev = tables.view(2, -1)
    return PositionGeometry(table, min(r_hi, seq_len), min(r_lo, seq_len), table_rev, tables)


# The O(N) position buffers (C2P / P2C in the input dtype, the backward's band buffers) are built for
# at most this many bytes at a time: larger batches run in slices of whole sequences. 2 GiB: a batch of
# 16384 tokens (v3 settings, H 12, bf16) needs up to 1.2 GB in the backward (N >= 512), one slice. Each
# further slice repeats the backward's host work (about 20 torch calls and 3 kernel launches); in the
# profile of a forward+backward at N 512 on an H100, with 2 slices, the GPU's kernels ran 4.7 ms of a 6.7 ms
# step (bench/results/h100_2026-11-22d/README.md).
CHUNK_BYTES = 2 << 30


def batch_slices(batch: int, bytes_per_sequence: int) -> list[slice]:
    """Slices of the batch whose position buffers fit in CHUNK_BYTES (at least one sequence each): as few as
    fit, of sizes that differ by at most one (8 sequences in slices of at most 7 run as 4 + 4, not 7 + 1,
    whose one-sequence launches would leave most of a GPU idle)."""
    most = batch if bytes_per_sequence <= 0 else max(1, min(batch, CHUNK_BYTES // bytes_per_sequence))
    count = -(-batch // most) if batch > 0 else 0
    return [slice(batch * i // count, batch * (i + 1) // count) for i in range(count)]


def position_scores(q, k, pos_key, pos_query):
    """C2P = q . pos_key^T and P2C = k . pos_query^T, contiguous and head-major, ``[H, B, N, 2S]``, in the
    input dtype (unscaled; None for an absent term). O(N * S) memory, recomputed by the backward.

    One GEMM per head over all B * N rows: for the model's ``[B, N, H, D]`` views those rows are a strided
    view (no copy of q / k, no copy of the tables broadcast over the batch, as a batched matmul over
    ``[B, H]`` would make)."""

    def scores(x, pos):
        B, H, N, D = x.shape
        rows = x.transpose(0, 1).reshape(H, B * N, D)  # a view unless x's batch and token strides cannot merge
        return torch.bmm(rows, pos.transpose(1, 2)).view(H, B, N, pos.shape[1])

    c2p = scores(q, pos_key) if pos_key is not None else None
    p2c = scores(k, pos_query) if pos_query is not None else None
    return c2p, p2c


BAND_ENV = "DEBERTA_FAST_TRITON_BAND"
BACKWARD_ENV = "DEBERTA_FAST_TRITON_BACKWARD"
DEFAULT_VARIANT = ("gather", "split")  # (band, backward) where neither the environment nor a measurement says


def _switch(env: str, values: tuple[str, ...]) -> str:
    mode = os.environ.get(env, "auto")
    if mode not in ("auto",) + values:
        named = [f"'{v}'" for v in ("auto",) + values]
        raise ValueError(f"{env} must be " + ", ".join(named[:-1]) + f" or {named[-1]}, got {mode!r}")
    return mode


def band_mode() -> str:
    """DEBERTA_FAST_TRITON_BAND: "gather" (band tiles gather the index, C2P and P2C per pair, on the kernel's tile),
    "oriented" (the same gathers, each term on a tile whose warps run along its dense index: :func:`position_bias`),
    "bias" (:func:`band_bias` stores the band's position terms once, band tiles read them back) or "auto" (unset:
    :func:`triton_variant` decides per call)."""
    return _switch(BAND_ENV, ("gather", "oriented", "bias"))


def backward_mode() -> str:
    """DEBERTA_FAST_TRITON_BACKWARD: "split" (a dK/dV kernel and a dQ kernel, each recomputing the
    probabilities; deterministic), "fused" (one kernel over key tiles that also adds dQ, and the c2p part
    of dS, atomically: the probabilities computed once, summation order not fixed) or "auto" (unset:
    :func:`triton_variant` decides per call)."""
    return _switch(BACKWARD_ENV, ("split", "fused"))


PREFETCH_ENV = "DEBERTA_FAST_TRITON_PREFETCH"


def prefetch_inner() -> bool:
    """DEBERTA_FAST_TRITON_PREFETCH: "1" (unset) the tile loops load each INNER band tile's position terms one
    iteration ahead (:func:`inner_ahead`); "0" each tile loads its own when it needs them, as before (for timing
    the two against each other)."""
    value = os.environ.get(PREFETCH_ENV, "1")
    if value not in ("0", "1"):
        raise ValueError(f"{PREFETCH_ENV} must be '1' or '0', got {value!r}")
    return value == "1"


def triton_variant(step: str, query: torch.Tensor) -> tuple[str, str]:
    """(band mode, backward mode) of a forward (``step`` "fwd") or backward ("bwd") call on ``query``
    ``[B, H, N, D]``: each switch the environment sets, and for the others the variant the recorded op-level
    benchmarks found fastest at the nearest recorded shape (``measured.TRITON_VARIANTS``, made by
    bench/make_selection.py from runs of the four variants; the rule of ``backends.selection``); without a
    measurement, gather / split. A forward's choice compares forward times; a backward's, forward+backward
    times less the forward's (the forward's cost depends on its band mode only); a band mode other than gather only
    where its block configs are recorded for the call's GPU, dtype and head dim (_with_recorded_configs). Under
    ``torch.use_deterministic_algorithms(True)`` an unset backward switch means "split" (deterministic)."""
    band, backward = band_mode(), backward_mode()
    if backward == "auto" and torch.are_deterministic_algorithms_enabled():
        backward = "split"  # the fused backward adds dQ atomically: its last bits vary from run to run
    if band != "auto" and backward != "auto":
        return band, backward
    capability = _device_capability({"Q": query})
    times = _measured_times(step, capability, query.dtype, query.shape[-1], query.shape[-2])
    if band == "auto":
        times = _with_recorded_configs(times, capability, query.dtype, query.shape[-1], query.shape[-2])
    fits = [v for v in times if band in ("auto", v[0]) and backward in ("auto", v[1])]
    if fits:
        return min(fits, key=lambda v: (times[v], v))
    return (DEFAULT_VARIANT[0] if band == "auto" else band), (DEFAULT_VARIANT[1] if backward == "auto" else backward)


def _with_recorded_configs(times: dict, capability: str | None, dtype: torch.dtype, head_dim: int,
                           seq_len: int) -> dict:
    """``times`` less the band modes other than the default (gather) whose block configs are not recorded
    (``tuned.py``) for the call's GPU, dtype and head dim: their times were taken with recorded configs (at the
    nearest measured shape) and say nothing of the fallback configs they would run here. Measured on an H100:
    band mode 'oriented', timed with its D 64 tuning, ran a D 128 forward+backward at N 8192 in 31.9 ms against
    gather's 19.1 where only gather had D 128 configs."""
    if not times or capability is None:
        return times
    return {v: ms for v, ms in times.items()
            if v[0] == DEFAULT_VARIANT[0] or measured_shape(f"fwd+{v[0]}", capability, dtype, head_dim, seq_len)}


def _measured_times(step: str, capability: str | None, dtype: torch.dtype, head_dim: int, seq_len: int) -> dict:
    """{(band, backward): median ms} recorded for ``step`` at the nearest shape; {} without a measurement (or on
    the CPU). A forward entry names its band mode only: it stands for that band with either backward."""
    if capability is None:
        return {}
    entries = nearest_entries(measured.TRITON_VARIANTS, capability, str(dtype).removeprefix("torch."), head_dim, step)
    if not entries:
        return {}
    times = nearest_length(entries, seq_len)
    if step == "fwd":
        return {(band, backward): ms for band, ms in times.items() for backward in ("split", "fused")}
    return dict(times)


def _round16(x: int) -> int:
    return (max(x, 0) + 15) // 16 * 16


@dataclass(frozen=True)
class BiasLayout:
    """Where :func:`band_bias` stores the position term of the band pair (i, j) (-r_lo < i - j < r_hi) of one
    (head, sequence): element ``i * row + j + offset`` of a plane of ``plane`` elements.

    Row i's band pairs take ``i * (row + 1) + [offset - r_hi + 1, offset + r_lo - 1]``: consecutive keys at
    consecutive addresses, rows apart by ``row + 1 >= width`` (no overlap). ``row``, ``offset`` and ``plane``
    are multiples of 16, so a launch marks them 16-divisible and a row's keys load as aligned vectors."""

    row: int
    offset: int
    plane: int

    @staticmethod
    def of(geometry: PositionGeometry, seq_len: int) -> "BiasLayout":
        offset = _round16(geometry.r_hi - 1)
        row = _round16(offset + geometry.r_lo - 1)
        return BiasLayout(row, offset, _round16((seq_len - 1) * (row + 1) + offset + 1))


NO_BIAS = BiasLayout(0, 0, 0)  # launches whose band tiles gather (no band bias)


def bias_layout(geometry: PositionGeometry | None, seq_len: int, band: str) -> BiasLayout:
    """The :class:`BiasLayout` of a call's band bias when its ``band`` mode is "bias" and it has position terms
    with a band, else ``NO_BIAS`` (plane 0)."""
    if geometry is None or geometry.width <= 0 or band != "bias":
        return NO_BIAS
    return BiasLayout.of(geometry, seq_len)


_BIAS_BLOCK = 32  # rows and band columns per program of _band_bias_kernel (16 under the interpreter); sm_90: 48 registers


@triton.jit
def _band_bias_kernel(
    C2P, P2C, TABLE, BIAS, N, two_s, R_HI, W, ROW, OFFSET, PLANE,
    HAS_C2P: tl.constexpr, HAS_P2C: tl.constexpr, BLOCK: tl.constexpr,
):
    """BIAS[i * ROW + j + OFFSET] = C2P[i, d(i, j)] + P2C[j, d(i, j)] for the band pairs of one (head, sequence)
    (program axis 2) in a [BLOCK queries, BLOCK band columns] tile. Column t is the key j = i + t - (R_HI - 1)
    (distance i - j = R_HI - 1 - t, one index row d per column). The P2C values of a tile lie on diagonals of
    the [2 BLOCK, BLOCK] block of its key rows: loaded row-wise (coalesced), then gathered on chip."""
    hb = tl.program_id(2).to(tl.int64)
    i0 = tl.program_id(0) * BLOCK
    t0 = tl.program_id(1) * BLOCK
    a = tl.arange(0, BLOCK)
    i = i0 + a
    t = t0 + a
    col_in = t < W
    d = tl.load(TABLE + (R_HI - 1 - t) + N - 1, mask=col_in, other=0)
    j = i[:, None] + t[None, :] - (R_HI - 1)
    valid = (i[:, None] < N) & col_in[None, :] & (j >= 0) & (j < N)
    C2P += hb * N * two_s
    P2C += hb * N * two_s
    bias = tl.zeros([BLOCK, BLOCK], dtype=tl.float32)
    if HAS_C2P:
        bias += tl.load(C2P + i[:, None] * two_s + d[None, :], mask=valid, other=0.0).to(tl.float32)
    if HAS_P2C:
        keys = i0 + t0 - (R_HI - 1) + tl.arange(0, 2 * BLOCK)  # key row of diagonal a + b
        rows_ok = (keys >= 0) & (keys < N)
        block = tl.load(P2C + keys[:, None] * two_s + d[None, :], mask=rows_ok[:, None] & col_in[None, :], other=0.0)
        bias += tl.gather(block, a[:, None] + a[None, :], 0).to(tl.float32)
    tl.store(BIAS + hb * PLANE + i[:, None] * (ROW + 1) + t[None, :] + (OFFSET - (R_HI - 1)),
             bias.to(BIAS.dtype.element_ty), mask=valid)


def band_bias(c2p, p2c, geometry: PositionGeometry, layout: BiasLayout) -> torch.Tensor:
    """The position term of every band pair, C2P[i, d] + P2C[j, d] (the absent term left out), rounded to the
    input dtype, in the skewed ``layout`` (:func:`bias_layout`): ``[H * B, plane]``. ``c2p`` / ``p2c``: ``[H, B, N, 2S]``
    from :func:`position_scores` (either may be None). Slots of no band pair are left unwritten: the kernels
    read them only for pairs beyond the band, whose loaded value they discard. O(N * width) memory, as the
    backward's band buffers."""
    ref = c2p if c2p is not None else p2c
    H, B, N, two_s = ref.shape
    bias = torch.empty(H * B, layout.plane, dtype=ref.dtype, device=ref.device)
    block = 16 if INTERPRET else _BIAS_BLOCK
    grid = (triton.cdiv(N, block), triton.cdiv(max(geometry.width, 1), block), H * B)
    _band_bias_kernel[grid](
        c2p if c2p is not None else ref, p2c if p2c is not None else ref, geometry.table, bias,
        N, two_s, geometry.r_hi, geometry.width, layout.row, layout.offset, layout.plane,
        HAS_C2P=c2p is not None, HAS_P2C=p2c is not None, BLOCK=block, num_warps=4,
    )
    return bias


def block_d(head_dim: int) -> int:
    """Head dims are padded to a power of two (at least 16, the smallest tl.dot) inside the kernels."""
    return max(16, triton.next_power_of_2(head_dim))


def upcast_dots(dtype: torch.dtype) -> bool:
    """Triton's interpreter computes bf16 tl.dot wrongly: there, bf16 dots run on fp32 upcasts."""
    return INTERPRET and dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------------------
# Autotuning: configs from a small generator, a prune filter, keys on a sequence-length bucket.


# The autotuner also keys on every tensor argument's dtype.
AUTOTUNE_KEY = ["SEQ_BUCKET", "HEAD_DIM", "HAS_C2P", "HAS_P2C", "HAS_MASK", "MASKED_ZERO", "DROPOUT", "PREC", "FUSED_DQ",
                "BAND_BIAS", "ORIENTED", "PREFETCH"]


def seq_bucket(n: int) -> int:
    """Autotune key for the sequence length: the next power of two, at least 16, at most 16384."""
    return min(16384, max(16, 1 << (n - 1).bit_length()))


def make_configs(shapes, interpret_blocks: tuple[int, int]) -> list[triton.Config]:
    """``triton.Config`` per (BLOCK_M, BLOCK_N, num_warps, num_stages[, maxnreg]); one small config under the
    interpreter.

    BLOCK_M is the query tile, BLOCK_N the key tile, whichever of them a kernel owns. ``maxnreg`` caps the
    registers per thread (ptxas spills the rest), so that more programs fit on a multiprocessor.
    """
    if INTERPRET:  # one config: the autotuner then never benchmarks (it cannot on the CPU)
        m, n = interpret_blocks
        return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=1, num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s, maxnreg=reg[0] if reg else None)
            for m, n, w, s, *reg in shapes]


# Budget of one tile: BLOCK_M * BLOCK_N * BLOCK_D * element size (bytes); 128 x 64 x 128 in bf16 fits.
_TILE_BUDGET = 128 * 64 * 128 * 2


def prune_configs(configs, named_args, owned="BLOCK_M", wide_owned=64, **kwargs):
    """Drop tiles longer than the sequence (beyond the 16 minimum) or too large for the head dim / dtype.

    ``owned`` names the block a program owns (BLOCK_M: queries; BLOCK_N: keys); above head dim 64 it
    may hold at most ``wide_owned`` rows (their fp32 accumulators live in registers). The first config
    left is the default when autotuning is off and ``tuned.py`` has no measurement for the call, so config
    lists are ordered best-guess first (guided by ptxas register / spill reports for sm_90).
    """
    args = {**named_args, **kwargs}
    limit = max(16, 1 << (args["N"] - 1).bit_length())
    head = triton.next_power_of_2(args["HEAD_DIM"])
    work = head * args["Q"].element_size()

    def fits(c):
        m, n = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        wide_ok = head <= 64 or c.kwargs[owned] <= wide_owned
        return m <= limit and n <= limit and m * n * work <= _TILE_BUDGET and wide_ok

    kept = [c for c in configs if fits(c)]
    if not kept:  # very short sequences: the smallest tile
        kept = [min(configs, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"], c.num_warps))]
    return kept


AUTOTUNE_ENV = "DEBERTA_FAST_TRITON_AUTOTUNE"


_AUTOTUNE_VALUES = {"1": "1", "true": "1", "on": "1", "yes": "1", "0": "0", "false": "0", "off": "0", "no": "0",
                    "auto": "auto", "": "auto"}


def autotune_mode() -> str:
    """DEBERTA_FAST_TRITON_AUTOTUNE: "1" (true / on / yes) always autotune; "0" (false / off / no) never
    (:func:`default_config`: the measured config, else the prune filter's first); unset or "auto": the
    measured config where ``tuned.py`` has one for the GPU, dtype and head dim, else autotune."""
    value = os.environ.get(AUTOTUNE_ENV, "auto")
    mode = _AUTOTUNE_VALUES.get(value.strip().lower())
    if mode is None:
        raise ValueError(f"{AUTOTUNE_ENV} must be 1, 0 or auto, got {value!r}")
    return mode


def autotuned(name: str, shapes, interpret_blocks: tuple[int, int], owned: str, wide_owned: int = 64,
              reset_to_zero: tuple[str, ...] = ()):
    """``triton.autotune`` over ``make_configs(shapes)`` keyed on the AUTOTUNE_KEY names the kernel has (Triton
    3.9 rejects a key that is not an argument), with the prune filter; ``name`` ("fwd", "dkdv", "dq") is the
    kernel's name in the measured-defaults table (``tuned.py``). ``reset_to_zero``: the arguments a launch
    accumulates into (atomics), zeroed by the autotuner before each timed run and before the real one."""
    prune = functools.partial(prune_configs, owned=owned, wide_owned=wide_owned)

    def decorate(fn):
        kernel = triton.autotune(
            configs=make_configs(shapes, interpret_blocks),
            key=[arg for arg in AUTOTUNE_KEY if arg in fn.arg_names],
            prune_configs_by={"early_config_prune": prune},
            reset_to_zero=list(reset_to_zero) or None,
        )(fn)
        kernel.deberta_name = name
        return kernel

    return decorate


def config_shape(config: triton.Config) -> tuple[int, ...]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages), plus maxnreg when the config caps registers, of a config, as
    the shape lists and ``tuned.py`` write it."""
    shape = (config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps, config.num_stages)
    maxnreg = getattr(config, "maxnreg", None)
    return shape + (maxnreg,) if maxnreg else shape


_SAME_WIDTH = {"float16": "bfloat16", "bfloat16": "float16"}


def measured_shape(name: str | None, capability: str, dtype: torch.dtype, head_dim: int, seq_len: int):
    """The config shape (common.config_shape) the recorded tuning runs (``tuned.FASTEST``) found fastest
    for kernel ``name`` on this GPU capability, dtype (float16 and bfloat16 stand in for each other) and head
    dim (padded to a power of two), at the measured sequence length nearest ``seq_len`` in log scale (the
    shorter on a tie); None without a measurement."""
    name_of = str(dtype).removeprefix("torch.")
    entries = None
    for recorded in (name_of, _SAME_WIDTH.get(name_of)):  # fp16 and bf16 run the same code: either's measurement
        entries = entries or FASTEST.get((capability, recorded, block_d(head_dim), name))
    if not entries:
        return None
    return tuple(nearest_length(entries, seq_len))


def _device_capability(named_args: dict) -> str | None:
    query = named_args["Q"]
    if not query.is_cuda:
        return None
    return device_capability(query.device.index if query.device.index is not None else torch.cuda.current_device())


def measured_config(kernel, named_args: dict, capability: str | None = None, **kwargs) -> triton.Config | None:
    """The config ``tuned.py`` records as fastest for this call, if the prune filter keeps it; else None."""
    capability = capability or _device_capability(named_args)
    if capability is None:
        return None
    name = getattr(kernel, "deberta_name", None)
    if kwargs.get("FUSED_DQ"):
        name = f"{name}+dq"  # the fused backward's dK/dV kernel: a different kernel, measured on its own
    if kwargs.get("BAND_BIAS"):
        name = f"{name}+bias"  # band tiles reading band_bias's buffer: measured on their own too
    if kwargs.get("ORIENTED"):
        name = f"{name}+oriented"  # band tiles gathering each term on its own tile: more registers, own configs
    return _measured_config(kernel, name, capability, named_args["Q"].dtype, kwargs["HEAD_DIM"], named_args["N"])


@functools.lru_cache(maxsize=4096)  # every launch asks: one lookup and prune per kernel and shape
def _measured_config(kernel, name, capability: str, dtype: torch.dtype, head_dim: int, seq_len: int):
    shape = measured_shape(name, capability, dtype, head_dim, seq_len)
    if shape is None:
        return None
    probe = {"N": seq_len, "Q": torch.empty(0, dtype=dtype)}  # what the prune filter reads
    for config in kernel.early_config_prune(kernel.configs, probe, HEAD_DIM=head_dim):
        if config_shape(config) == shape:
            return config
    return None


def default_config(kernel, named_args: dict, capability: str | None = None, **kwargs) -> triton.Config:
    """The config a launch uses when autotuning is off: among the configs the prune filter keeps, the one
    the recorded tuning runs found fastest for this GPU capability, dtype, head dim and nearest sequence length
    (``tuned.py``); without a measurement, the prune filter's first. ``capability`` ("9.0") defaults to
    the device of ``named_args["Q"]`` (CUDA tensors only)."""
    measured = measured_config(kernel, named_args, capability, **kwargs)
    return measured if measured is not None else kernel.early_config_prune(kernel.configs, named_args, **kwargs)[0]


def launch_config(kernel, named_args: dict, mode: str, capability: str | None = None, **kwargs) -> triton.Config | None:
    """The config a launch in autotune ``mode`` ("0", "1", "auto") runs, or None: the autotuner picks."""
    if mode == "1":
        return None
    if mode == "0":
        return default_config(kernel, named_args, capability, **kwargs)
    return measured_config(kernel, named_args, capability, **kwargs)


# kernel -> triton.Config that ``launch`` must use (tests check every config this way).
_FORCED: dict = {}


@contextlib.contextmanager
def forced_config(kernel, config):
    """Within the block, ``launch(kernel, ...)`` runs ``config`` (no autotuning, no pruning)."""
    _FORCED[kernel] = config
    try:
        yield
    finally:
        _FORCED.pop(kernel, None)


def launch(kernel, grid, *args, **kwargs) -> None:
    """Run an ``autotuned`` kernel with the config :func:`launch_config` gives for the autotune mode, or
    through the autotuner (benchmarking its configs on the first call of each key)."""
    config = _FORCED.get(kernel)
    if config is None and not INTERPRET:
        config = launch_config(kernel, dict(zip(kernel.arg_names, args)), autotune_mode(), **kwargs)
    if config is None:
        kernel[grid](*args, **kwargs)
        return
    kernel.fn[grid](*args, **kwargs, **config.all_kwargs())


# ----------------------------------------------------------------------------------------------------
# Tile helpers.


@triton.jit
def dot(a, b, acc, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b in fp32. UPCAST (interpreter only) computes bf16 operands in fp32, which the
    interpreter's bf16 dot gets wrong."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PREC)


@triton.jit
def load_rows(ptr, rows, stride_n, stride_d, N, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CHECK_N: tl.constexpr):
    """Rows ``rows`` of a [N, HEAD_DIM] matrix as a [len(rows), BLOCK_D] tile; zero padding."""
    offs_d = tl.arange(0, BLOCK_D)
    ptrs = ptr + rows[:, None] * stride_n + offs_d[None, :] * stride_d
    if CHECK_N:
        if BLOCK_D == HEAD_DIM:
            x = tl.load(ptrs, mask=rows[:, None] < N, other=0.0)
        else:
            x = tl.load(ptrs, mask=(rows[:, None] < N) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    else:
        if BLOCK_D == HEAD_DIM:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    return x


@triton.jit
def store_rows(ptr, x, rows, stride_n, stride_d, N, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Store a [len(rows), BLOCK_D] tile into rows ``rows`` (< N) of a [N, HEAD_DIM] matrix."""
    offs_d = tl.arange(0, BLOCK_D)
    ptrs = ptr + rows[:, None] * stride_n + offs_d[None, :] * stride_d
    if BLOCK_D == HEAD_DIM:
        tl.store(ptrs, x.to(ptr.dtype.element_ty), mask=rows[:, None] < N)
    else:
        tl.store(ptrs, x.to(ptr.dtype.element_ty), mask=(rows[:, None] < N) & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def load_vector(ptr, stride_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """A [HEAD_DIM] vector as [BLOCK_D] fp32, zero padded."""
    offs_d = tl.arange(0, BLOCK_D)
    return tl.load(ptr + offs_d * stride_d, mask=offs_d < HEAD_DIM, other=0.0).to(tl.float32)


@triton.jit
def key_regions(i0, N, R_HI, R_LO, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """For queries [i0, i0 + BLOCK_M): key tiles [0, hi_end) are SAT_HI (all full), [hi_end, lo_start)
    BAND and [lo_start, N) SAT_LO. Tiles start at multiples of BLOCK_N."""
    hi_end = (tl.maximum(i0 - R_HI + 1, 0) // BLOCK_N) * BLOCK_N
    lo_start = tl.minimum((i0 + BLOCK_M - 1 + R_LO + BLOCK_N - 1) // BLOCK_N * BLOCK_N, N)
    return hi_end, lo_start


@triton.jit
def query_regions(j0, N, R_HI, R_LO, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """For keys [j0, j0 + BLOCK_N): query tiles [0, lo_end) are SAT_LO (all full), [lo_end, hi_start)
    BAND and [hi_start, N) SAT_HI. Tiles start at multiples of BLOCK_M."""
    lo_end = (tl.maximum(j0 - R_LO + 1, 0) // BLOCK_M) * BLOCK_M
    hi_start = tl.minimum((j0 + BLOCK_N - 1 + R_HI + BLOCK_M - 1) // BLOCK_M * BLOCK_M, N)
    return lo_end, hi_start


@triton.jit
def inner_band(o0, N, R_BEFORE, R_AFTER, OWN: tl.constexpr, OTHER: tl.constexpr):
    """[lo, hi): the tiles of the other index (starting at multiples of OTHER) whose pairs with the program's OWN
    indices [o0, o0 + OWN) all lie strictly inside the band and inside the sequence: INNER tiles, which need no
    band-edge or bounds tests. Queries own (forward, dQ): R_BEFORE = R_HI, R_AFTER = R_LO (a key tile j0 is inner
    when j0 >= i0 + BLOCK_M - r_hi and j0 + BLOCK_N <= i0 + r_lo); keys own (dK/dV): R_LO, R_HI. Empty when the
    program's own tile reaches past N."""
    lo = (tl.maximum(o0 + OWN - R_BEFORE, 0) + OTHER - 1) // OTHER * OTHER
    hi = tl.minimum((o0 + R_AFTER) // OTHER * OTHER, N // OTHER * OTHER)
    return lo, tl.where(o0 + OWN <= N, tl.maximum(hi, lo), lo)


@triton.jit
def band_runs(start, end, inner_lo, inner_hi):
    """Split the band tiles [start, end) around the inner ones: [a, b) inner, [start, a) and [b, end) not (one loop
    of the tile functions visits both: :func:`tile_start`)."""
    a = tl.minimum(tl.maximum(inner_lo, start), end)
    b = tl.maximum(tl.minimum(inner_hi, end), a)
    return a, b


@triton.jit
def tile_count(start, end, gap_lo, gap_hi, BLOCK: tl.constexpr):
    """How many tiles of BLOCK a loop over [start, end) less the gap [gap_lo, gap_hi) visits (gap_lo = gap_hi =
    end: no gap); :func:`tile_start` gives the t-th tile's first index."""
    return (gap_lo - start + BLOCK - 1) // BLOCK + (end - gap_hi + BLOCK - 1) // BLOCK


@triton.jit
def tile_start(t, start, gap_lo, gap_hi, BLOCK: tl.constexpr):
    """The first index of the t-th tile of :func:`tile_count`'s loop. Every loop of the kernels starts on the
    tile grid (a multiple of BLOCK), and so does a gap with tiles after it: the result is a multiple of BLOCK,
    which the hint tells the compiler (aligned, vectorized loads of the mask and of K / V rows)."""
    lead = (gap_lo - start + BLOCK - 1) // BLOCK
    return tl.multiple_of(tl.where(t < lead, start + t * BLOCK, gap_hi + (t - lead) * BLOCK), BLOCK)


def token_ranges(mask: torch.Tensor) -> torch.Tensor:
    """int32 ``[B, 2]``: each sequence's first token and last token + 1 (``[N, 0]`` for a sequence without a
    token), from a bool ``[B, N]`` mask; no host-device synchronization."""
    N = mask.shape[1]
    index = torch.arange(N, device=mask.device, dtype=torch.int32)
    first = torch.where(mask, index, N).amin(1)
    last = torch.where(mask, index + 1, 0).amax(1)
    return torch.stack([first, last], 1).to(torch.int32)


@triton.jit
def token_span(RANGE, b, ok, inside, N, BLOCK: tl.constexpr, PADDED_NEED_ALL: tl.constexpr):
    """[lo, hi) of the other index a tile of a padded sequence must visit, when only pairs of two tokens
    contribute: the sequence's token hull (``RANGE[b]`` from :func:`token_ranges`), lo rounded down to a
    multiple of BLOCK, empty when the tile (``ok``: token flags, ``inside``: index < N) holds no token.
    PADDED_NEED_ALL: [0, N) as soon as the tile holds a padded index (masked_rows "uniform": a fully padded
    query row attends to every key)."""
    first = tl.load(RANGE + b * 2)
    last = tl.load(RANGE + b * 2 + 1)
    n_token = tl.sum((ok & inside).to(tl.int32), 0)
    lo = first // BLOCK * BLOCK
    hi = tl.where(n_token > 0, last, 0)
    if PADDED_NEED_ALL:
        n_padded = tl.sum(((ok == 0) & inside).to(tl.int32), 0)
        lo = tl.where(n_padded > 0, 0, lo)
        hi = tl.where(n_padded > 0, N, hi)
    return lo, hi


@triton.jit
def load_if(ptr, mask, other, CHECK: tl.constexpr):
    """``tl.load(ptr, mask=mask, other=other)``, or unmasked without CHECK."""
    if CHECK:
        x = tl.load(ptr, mask=mask, other=other)
    else:
        x = tl.load(ptr)
    return x


@triton.jit
def tile_pairs(offs_m, offs_n, QUERY_AXIS: tl.constexpr):
    """(i, j): the queries ``offs_m`` and keys ``offs_n`` broadcast over a tile with queries on axis QUERY_AXIS."""
    if QUERY_AXIS == 0:
        i = offs_m[:, None]
        j = offs_n[None, :]
    else:
        i = offs_m[None, :]
        j = offs_n[:, None]
    return i, j


@triton.jit
def gathered_term(SCORES, TABLE, offs_m, offs_n, two_s, N, QUERY_AXIS: tl.constexpr, C2P_TERM: tl.constexpr,
                  TRANSPOSE: tl.constexpr, CHECK: tl.constexpr):
    """One position term of a band tile with queries on axis QUERY_AXIS, fp32: C2P[i, d(i, j)] (C2P_TERM, SCORES
    the [N, 2S] C2P of this (head, sequence)) or P2C[j, d(i, j)], gathered on the transposed tile when TRANSPOSE
    (:data:`INDEX_ALONG_FAST_AXIS`: so that a warp's threads run along the index the addresses are dense in), its
    index from ``TABLE``: ``table_rev`` (c2p: index j - i) or ``table`` (p2c: i - j)."""
    if TRANSPOSE:
        i, j = tile_pairs(offs_m, offs_n, 1 - QUERY_AXIS)
    else:
        i, j = tile_pairs(offs_m, offs_n, QUERY_AXIS)
    valid = (i < N) & (j < N)
    if C2P_TERM:
        d = load_if(TABLE + (j - i + N - 1), valid, 0, CHECK)
        x = load_if(SCORES + i * two_s + d, valid, 0.0, CHECK).to(tl.float32)
    else:
        d = load_if(TABLE + (i - j + N - 1), valid, 0, CHECK)
        x = load_if(SCORES + j * two_s + d, valid, 0.0, CHECK).to(tl.float32)
    if TRANSPOSE:
        x = tl.trans(x)
    return x


@triton.jit
def store_by_distance(BAND, offs_m, offs_n, ds, valid, W, N, R_HI, R_LO, QUERY_AXIS: tl.constexpr,
                      ORIENTED: tl.constexpr, KEYS_ON_THREADS: tl.constexpr, CHECK: tl.constexpr):
    """``BAND[i * W + i - j + r_lo - 1] = dS[i, j]`` for the band pairs of a tile of queries ``offs_m`` and keys
    ``offs_n`` with queries on axis QUERY_AXIS (``ds``: that tile, fp32; ``valid``: both inside the sequence, on
    it): the c2p part of dS by distance (BAND_Q, whose addresses are dense along keys). In band mode "oriented"
    (ORIENTED), where this Triton's threads run along the tile's query axis (not KEYS_ON_THREADS: the kernels'
    INDEX_REVERSED), stored from the transposed tile. CHECK: only pairs inside the band and the sequence (else
    all are, INNER tiles)."""
    if ORIENTED and not KEYS_ON_THREADS:
        i, j = tile_pairs(offs_m, offs_n, 1 - QUERY_AXIS)
        x = tl.trans(ds)
        inside = (i < N) & (j < N)
    else:
        i, j = tile_pairs(offs_m, offs_n, QUERY_AXIS)
        x = ds
        inside = valid
    r = i - j
    if CHECK:  # the mask before the addresses: ptxas allocates registers by this order (dQ kernel: 220 or 252)
        in_band = (r > -R_LO) & (r < R_HI) & inside
        tl.store(BAND + i * W + (r + (R_LO - 1)), x.to(BAND.dtype.element_ty), mask=in_band)
    else:
        tl.store(BAND + i * W + (r + (R_LO - 1)), x.to(BAND.dtype.element_ty))


@triton.jit
def position_bias(offs_m, offs_n, valid, C2P, P2C, TABLE, BIAS, bias_row, bias_offset, two_s, N, R_HI, R_LO, sat_hi,
                  sat_lo, HAS_C2P: tl.constexpr, HAS_P2C: tl.constexpr, KEYS_ON_THREADS: tl.constexpr,
                  BAND_BIAS: tl.constexpr, ORIENTED: tl.constexpr, CHECK: tl.constexpr, QUERY_AXIS: tl.constexpr):
    """Unscaled q_i . pos_key[d] + k_j . pos_query[d] for the pairs of a band tile of queries ``offs_m`` and keys
    ``offs_n``, queries on axis QUERY_AXIS (0: [queries, keys], the forward and dQ kernels; 1: dK/dV); ``valid``:
    both inside the sequence, on that tile (the kernel's own mask).

    Band tiles gather d from the index tables and the terms from the [N, 2S] matrices C2P = Q pos_key^T and
    P2C = K pos_query^T. KEYS_ON_THREADS (the kernels' INDEX_REVERSED, from :func:`index_table`): this Triton's
    gathers run along the tile's key axis, and ``TABLE`` is ``table_rev`` (else ``table``), the other one next to
    it in PositionGeometry.tables (``table`` 2N - 1 entries before ``table_rev``). Band mode "gather": both terms on
    the kernel's tile through one index load, so one of them is read along the index its addresses are not dense
    in (:data:`INDEX_ALONG_FAST_AXIS`); ORIENTED (band mode "oriented"): each term on a tile oriented for it
    (:func:`gathered_term`: the c2p term on the kernel's tile and the p2c term on its transpose when
    KEYS_ON_THREADS, else the other way round), two index loads. Under BAND_BIAS they read the band pairs' sums
    from :func:`band_bias`'s buffer (``BIAS``, :class:`BiasLayout` ``bias_row`` / ``bias_offset``) and take
    ``sat_hi`` / ``sat_lo`` (:func:`band_edge_terms`) for the tile's pairs beyond the band. (Saturated tiles need
    none of this: :func:`saturated_operand`.) Without CHECK (INNER tiles: every pair inside the band and the
    sequence) the loads are unmasked and no pair is beyond the band.
    """
    if BAND_BIAS:
        i, j = tile_pairs(offs_m, offs_n, QUERY_AXIS)
        # Every pair with i, j < N addresses a slot inside the plane (i * row + j + offset < plane), so the
        # load needs no band test (a mask constant along keys keeps it vectorized): a pair beyond the band
        # reads some other pair's slot, which the saturated value then replaces.
        bias = load_if(BIAS + i * bias_row + j + bias_offset, valid, 0.0, CHECK).to(tl.float32)
        if CHECK:
            r = i - j
            bias = tl.where(r >= R_HI, sat_hi, tl.where(r <= -R_LO, sat_lo, bias))
    elif ORIENTED:
        if KEYS_ON_THREADS:
            table_rev = TABLE
            table = TABLE - (2 * N - 1)
        else:
            table_rev = TABLE + (2 * N - 1)
            table = TABLE
        if HAS_C2P:
            bias = gathered_term(C2P, table_rev, offs_m, offs_n, two_s, N, QUERY_AXIS, True, not KEYS_ON_THREADS, CHECK)
            if HAS_P2C:
                bias += gathered_term(P2C, table, offs_m, offs_n, two_s, N, QUERY_AXIS, False, KEYS_ON_THREADS, CHECK)
        else:
            bias = gathered_term(P2C, table, offs_m, offs_n, two_s, N, QUERY_AXIS, False, KEYS_ON_THREADS, CHECK)
    else:
        # both terms on the kernel's tile, one index load (its table the one whose index grows along the thread axis)
        i, j = tile_pairs(offs_m, offs_n, QUERY_AXIS)
        if KEYS_ON_THREADS:
            d = load_if(TABLE + (j - i + N - 1), valid, 0, CHECK)
        else:
            d = load_if(TABLE + (i - j + N - 1), valid, 0, CHECK)
        if HAS_C2P:
            bias = load_if(C2P + i * two_s + d, valid, 0.0, CHECK).to(tl.float32)
            if HAS_P2C:
                bias += load_if(P2C + j * two_s + d, valid, 0.0, CHECK).to(tl.float32)
        else:
            bias = load_if(P2C + j * two_s + d, valid, 0.0, CHECK).to(tl.float32)
    return bias


@triton.jit
def inner_ahead(t, start, n_tiles, own, C2P, P2C, TABLE, BIAS, bias_row, bias_offset, two_s, N,
                HAS_C2P: tl.constexpr, HAS_P2C: tl.constexpr, KEYS_ON_THREADS: tl.constexpr, BAND_BIAS: tl.constexpr,
                ORIENTED: tl.constexpr, QUERY_AXIS: tl.constexpr, OWN: tl.constexpr, BLOCK: tl.constexpr):
    """Prefetching (the kernels' PREFETCH): the position terms of the tile after the t-th of a loop over the INNER
    tiles [start, start + n_tiles * BLOCK) (no gap), [OWN, BLOCK] fp32 (:func:`position_bias` with no tests: every
    pair inside the band and the sequence); ``own``: the program's own indices (queries when QUERY_AXIS is 0, keys
    when 1). t = -1: the first tile's, before the loop (zeros for an empty loop); the last tile reloads its own
    (a valid tile, the values unused). A loop loads them at the end of an iteration, so that their latency (an
    index load, then the gathers that depend on it) overlaps the work left in the loop instead of stalling the
    next tile's first use of them."""
    terms = tl.zeros([OWN, BLOCK], dtype=tl.float32)
    if n_tiles > 0:
        other = start + tl.minimum(t + 1, n_tiles - 1) * BLOCK
        other = tl.multiple_of(other, BLOCK) + tl.arange(0, BLOCK)
        if QUERY_AXIS == 0:
            terms = position_bias(own, other, 0, C2P, P2C, TABLE, BIAS, bias_row, bias_offset, two_s, N, 0, 0, 0.0,
                                  0.0, HAS_C2P, HAS_P2C, KEYS_ON_THREADS, BAND_BIAS, ORIENTED, False, 0)
        else:
            terms = position_bias(other, own, 0, C2P, P2C, TABLE, BIAS, bias_row, bias_offset, two_s, N, 0, 0, 0.0,
                                  0.0, HAS_C2P, HAS_P2C, KEYS_ON_THREADS, BAND_BIAS, ORIENTED, False, 1)
    return terms


@triton.jit
def band_edge_terms(own_hi, own_lo, OTHER, cols, col_in, two_s, HAS_OTHER: tl.constexpr):
    """(sat_hi, sat_lo) of :func:`position_bias` for a band tile under BAND_BIAS: the position term of its pairs
    at rows 2S - 1 and 0, the program's own per-row values (``own_hi`` / ``own_lo``: [rows, 1] or 0.0) plus the
    other side's at the tile's columns ``cols``, read from OTHER ([N, 2S] of this (head, sequence): P2C when the
    rows are queries, C2P when they are keys)."""
    sat_hi = own_hi
    sat_lo = own_lo
    if HAS_OTHER:
        sat_hi += tl.load(OTHER + cols * two_s + (two_s - 1), mask=col_in, other=0.0).to(tl.float32)[None, :]
        sat_lo += tl.load(OTHER + cols * two_s, mask=col_in, other=0.0).to(tl.float32)[None, :]
    return sat_hi, sat_lo


@triton.jit
def end_terms(SCORES, rows, inside, ok, two_s, scale, HAS: tl.constexpr):
    """(hi, lo, off_hi, off_lo) of a program's own rows (queries: SCORES = C2P; keys: P2C, [N, 2S] of this (head,
    sequence)): their position terms at rows 2S - 1 and 0 ([rows, 1] fp32, 0 past N) and the same times ``scale``,
    0 on rows not ``ok`` ([rows]: the offsets saturated tiles add in the exponent, :func:`saturated_operand`);
    0.0 each without HAS."""
    hi = 0.0
    lo = 0.0
    off_hi = 0.0
    off_lo = 0.0
    if HAS:
        hi = tl.load(SCORES + rows * two_s + (two_s - 1), mask=inside, other=0.0).to(tl.float32)
        lo = tl.load(SCORES + rows * two_s, mask=inside, other=0.0).to(tl.float32)
        off_hi = tl.where(ok, hi * scale, 0.0)
        off_lo = tl.where(ok, lo * scale, 0.0)
        hi = hi[:, None]
        lo = lo[:, None]
    return hi, lo, off_hi, off_lo


@triton.jit
def saturated_operand(x, POS, row, stride_pn, stride_pd, HAS: tl.constexpr, HEAD_DIM: tl.constexpr,
                      BLOCK_D: tl.constexpr):
    """``x + POS[row]`` in x's dtype ([rows, BLOCK_D]; POS this head's [2S, D] table), or x when not HAS.

    In a saturated tile every pair uses one position row, so the other side's position term folds into this
    side's operand: q_i . k_j + k_j . pos_query[row] = (q_i + pos_query[row]) . k_j. Such tiles then run one
    dot and add one value per row of the program (its own term at that row), with no per-tile position loads.
    The sum is rounded to x's dtype (the dot's input type), as the materialized C2P / P2C are."""
    if HAS:
        x = (x.to(tl.float32) + load_vector(POS + row * stride_pn, stride_pd, HEAD_DIM, BLOCK_D)[None, :]).to(x.dtype)
    return x


@triton.jit
def mask_scores(s, row_ok, col_ok, col_in, HAS_MASK: tl.constexpr, MASKED_ZERO: tl.constexpr, CHECK_COL: tl.constexpr):
    """-inf where the pair is padding (query or key), 0 on fully padded query rows unless MASKED_ZERO
    (they attend uniformly to all N keys, as transformers fills them with one constant), -inf beyond N."""
    if HAS_MASK:
        s = tl.where(row_ok & col_ok, s, float("-inf"))
        if not MASKED_ZERO:
            s = tl.where(row_ok, s, 0.0)
    if CHECK_COL:
        s = tl.where(col_in, s, float("-inf"))
    return s
