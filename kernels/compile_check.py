"""Compile the attention kernels for a GPU target without a GPU, and report ptxas registers and spills.

The interpreter runs the kernels' Python on the CPU but never compiles them, so errors that only the
compiler sees (non-constexpr globals, layouts, types) would reach the first GPU run. This module builds
each kernel family for a target (default sm_90) with the ptxas bundled in Triton's wheel::

    python -m deberta_fast.kernels.compile_check            # default configs, representative flags
    python -m deberta_fast.kernels.compile_check --all      # every config of the autotune lists
    python -m deberta_fast.kernels.compile_check --loops    # and the SASS instructions of each loop body

Run it with TRITON_INTERPRET unset (the kernels must be defined as compiled, not interpreted, kernels).
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import tempfile

import torch
import triton
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource
from triton.runtime.jit import native_specialize_impl

from . import attention_bwd, attention_fwd, common
from .common import INTERPRET, block_d

_PTR = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}
_FLOATS = ("scale", "qk_scale", "dropout_p")


def _pointer_types(kernel_name: str, dtype: torch.dtype) -> dict[str, str]:
    io = _PTR[dtype]
    common = dict(Q=io, K=io, V=io, C2P=io, P2C=io, TABLE="*i32", BIAS=io, MASK="*u8", RANGE="*i32", PHILOX="*i64",
                  LSE="*fp32")
    if kernel_name == "fwd":
        return dict(common, O=io, POS_Q=io)
    common.update(DO=io, DELTA="*fp32", POS_K=io, POS_Q=io)
    if kernel_name == "dkdv":
        return dict(common, DK="*fp32", DV=io, BAND_K=io, SAT_K="*fp32", DQ="*fp32", BAND_Q=io, SAT_Q="*fp32")
    return dict(common, DQ="*fp32", BAND_Q=io, SAT_Q="*fp32")


KERNELS = {
    "fwd": attention_fwd._attn_fwd_kernel,
    "dkdv": attention_bwd._dkdv_kernel,
    "dq": attention_bwd._dq_kernel,
}


def default_config(name: str, dtype: torch.dtype, head_dim: int, seq_len: int = 4096, arch: int = 90) -> triton.Config:
    """The config ``launch`` uses for kernel ``name`` on an sm_``arch`` GPU when autotuning is off."""
    args = {"N": seq_len, "Q": torch.empty(0, dtype=dtype)}
    return common.default_config(KERNELS[name], args, f"{arch // 10}.{arch % 10}", HEAD_DIM=head_dim)


def launch_values(name: str, *, head_dim: int = 64, seq_len: int = 4096, batch: int = 4, heads: int = 12,
                  two_s: int = 512, r_hi: int = 509, r_lo: int = 509) -> dict:
    """Representative integer arguments of a launch of kernel ``name`` (the model's ``[B, N, H, D]`` views,
    v3 position settings). A real launch specializes on them: an integer equal to 1 becomes a constant (so
    unit strides make contiguous, vectorizable rows) and one divisible by 16 is marked so; compiling with
    bare ``i32`` arguments would report code the GPU never runs."""
    rows = dict(b=seq_len * heads * head_dim, h=head_dim, n=heads * head_dim, d=1)  # [B, N, H, D] views
    values = {}
    for arg in KERNELS[name].fn.arg_names:
        match = re.fullmatch(r"stride_[a-z]+([bhnd])", arg)
        if match:
            values[arg] = rows[match.group(1)]
    # the position tables [H, 2S, D] as the model passes them: [2S, H, D] projections, transposed
    table = dict(h=head_dim, n=heads * head_dim, d=1)
    values.update({f"stride_{t}{axis}": table[axis] for t in ("pk", "pq", "p") for axis in "hnd"})
    values.update(stride_mb=seq_len, stride_mn=1)
    width = (r_hi + r_lo - 1 + 7) // 8 * 8
    values.update(B=batch, H=heads, N=seq_len, BH0=0, R_HI=r_hi, R_LO=r_lo, two_s=two_s, W=width,
                  SEQ_BUCKET=seq_len)
    none = torch.empty(0)
    geometry = common.PositionGeometry(none, min(r_hi, seq_len), min(r_lo, seq_len), none, none)
    layout = common.BiasLayout.of(geometry, seq_len)
    values.update(BIAS_ROW=layout.row, BIAS_OFFSET=layout.offset, BIAS_PLANE=layout.plane)
    return values


def index_reversed(name: str, along_fast_axis: bool | None = None) -> bool:
    """The INDEX_REVERSED a launch of kernel ``name`` passes (common.index_table), for the installed Triton's
    orientation or, given ``along_fast_axis``, for that one."""
    along = common.INDEX_ALONG_FAST_AXIS if along_fast_axis is None else along_fast_axis
    return (name != "dkdv") == along


def compile_kernel(name: str, config: triton.Config, *, dtype=torch.bfloat16, head_dim=64, arch=90, **flags):
    """Compile kernel ``name`` ("fwd", "dkdv", "dq") with ``config`` and feature ``flags`` for sm_``arch``,
    its arguments specialized as a launch with :func:`launch_values` specializes them (16-byte aligned
    pointers)."""
    jit = KERNELS[name].fn
    constexprs = dict(
        HEAD_DIM=head_dim, BLOCK_D=block_d(head_dim), HAS_C2P=True, HAS_P2C=True, HAS_MASK=True,
        MASKED_ZERO=False, DROPOUT=False, PREC="ieee", UPCAST=False, BAND_BIAS=False, ORIENTED=False,
        INDEX_REVERSED=index_reversed(name),
    )
    if name == "dkdv":
        constexprs["FUSED_DQ"] = False
    constexprs.update(flags)
    constexprs.setdefault("PREFETCH", not constexprs["BAND_BIAS"])  # as the launches set it, by default
    constexprs.update(config.kwargs)
    source = _source(jit, constexprs, _pointer_types(name, dtype), launch_values(name, head_dim=head_dim))
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    if getattr(config, "maxnreg", None):
        options["maxnreg"] = config.maxnreg
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def _source(jit, constexprs: dict, pointers: dict, values: dict) -> ASTSource:
    """The kernel ``jit`` as a launch specializes it: 16-byte aligned ``pointers`` (name -> type), fp32
    scalars, and integer ``values`` specialized as Triton's launcher does (1 -> constant, 16-divisible)."""
    constexprs = dict(constexprs)
    signature, attrs = {}, {}
    for index, arg in enumerate(jit.arg_names):
        if arg in constexprs:
            signature[arg] = "constexpr"
            continue
        if arg in pointers:
            kind, spec = pointers[arg], "D"
        elif arg in _FLOATS:
            kind, spec = "fp32", None
        else:
            kind, spec = native_specialize_impl(BaseBackend, values[arg], False, True, True)
            if kind == "constexpr":
                constexprs[arg] = spec
                signature[arg] = "constexpr"
                continue
        signature[arg] = kind
        if spec:
            attrs[(index,)] = BaseBackend.parse_attr(spec)
    return ASTSource(jit, signature, constexprs=constexprs, attrs=attrs)


def compile_band_bias(dtype=torch.bfloat16, arch=90, seq_len: int = 4096, two_s: int = 512):
    """Compile ``common._band_bias_kernel`` (the band pairs' position terms, DEBERTA_FAST_TRITON_BAND=bias) for
    sm_``arch``, its integers specialized as a launch at ``seq_len`` with v3 settings specializes them."""
    jit = common._band_bias_kernel
    constexprs = dict(HAS_C2P=True, HAS_P2C=True, BLOCK=common._BIAS_BLOCK)
    geometry = common.PositionGeometry(torch.empty(0), 506, 512, torch.empty(0), torch.empty(0))
    layout = common.BiasLayout.of(geometry, seq_len)
    values = dict(N=seq_len, two_s=two_s, R_HI=geometry.r_hi, W=geometry.width, ROW=layout.row,
                  OFFSET=layout.offset, PLANE=layout.plane)
    pointers = dict(C2P=_PTR[dtype], P2C=_PTR[dtype], TABLE="*i32", BIAS=_PTR[dtype])
    source = _source(jit, constexprs, pointers, values)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})


def compile_band_edges(dtype=torch.bfloat16, arch=90, rows_are_queries=True):
    """Compile the backward's ``_band_edges_kernel`` (zeroes the band slots no pair writes) for sm_``arch``."""
    jit = attention_bwd._band_edges_kernel
    constexprs = dict(ROWS_ARE_QUERIES=rows_are_queries, BLOCK_R=attention_bwd._EDGE_ROWS,
                      BLOCK_C=attention_bwd._EDGE_COLS)
    signature = {arg: "constexpr" if arg in constexprs else "i32" for arg in jit.arg_names}
    signature["BAND"] = _PTR[dtype]
    source = ASTSource(jit, signature, constexprs=constexprs, attrs={(0,): BaseBackend.parse_attr("D")})
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})


def ptxas_report(compiled, arch=90) -> dict:
    """Registers per thread and spill bytes of a compiled kernel, from the ptxas Triton itself uses for ``arch``
    (the bundled one; Triton 3.9's PTX needs its newer ``ptxas-blackwell`` even for sm_90)."""
    ptxas = get_ptxas(arch).path
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(compiled.asm["ptx"])
    try:
        suffix = "a" if arch >= 90 else ""
        log = subprocess.run([ptxas, f"-arch=sm_{arch}{suffix}", "-v", f.name, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
    finally:
        os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    return {"registers": int(regs.group(1)) if regs else None, "spill_stores": int(spills.group(1)) if spills else 0,
            "shared": compiled.metadata.shared}


def sass(compiled, arch=90) -> str:
    """The SASS of a compiled kernel, disassembled with the nvdisasm next to the ptxas Triton uses."""
    nvdisasm = os.path.join(os.path.dirname(get_ptxas(arch).path), "nvdisasm")
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
    try:
        return subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)


def _loop_bodies(compiled, arch=90) -> list[list[str]]:
    """The SASS instructions of each loop body of a compiled kernel (a backward branch's target to the branch), in
    code order (:func:`sass`)."""
    labels, branches, instructions = {}, [], []
    for line in sass(compiled, arch).splitlines():
        label = re.match(r"\s*\.(L_x_\d+):", line)
        if label:
            labels[label.group(1)] = len(instructions)
        elif re.match(r"\s*/\*[0-9a-f]+\*/\s", line):
            target = re.search(r"\bBRA\b.*`\(\.(L_x_\d+)\)", line)
            if target:
                branches.append((len(instructions), target.group(1)))
            instructions.append(line)
    # (the branch to itself after EXIT is no loop body)
    return [instructions[labels[name]:at + 1] for at, name in branches if labels.get(name, at) < at]


def loop_instructions(compiled, arch=90) -> list[int]:
    """SASS instructions in each loop body of a compiled kernel, in code order. Static counts, not timings: the
    forward with position terms has four loops (saturated-high, band edges, inner band, saturated-low tiles)."""
    return [len(body) for body in _loop_bodies(compiled, arch)]


def inner_loop_schedule(compiled, arch=90) -> tuple[int, list[int]]:
    """Where, in the inner-band loop body (the third loop of a kernel with position terms), the first tensor-core
    product sits and the loads from global memory into registers (the gathers of the position terms and the index,
    and the backward's per-row LSE / Delta; not the asynchronous K / V or Q / dO tile copies), as instruction
    positions. Loaded one tile ahead (the kernels' PREFETCH), the gathers come after the tile's first product."""
    body = _loop_bodies(compiled, arch)[2]
    products = [at for at, line in enumerate(body) if re.search(r"\b[HI]GMMA\b|\bHMMA\b", line)]
    loads = [at for at, line in enumerate(body) if re.search(r"\bLDG\.E\b", line)]
    return products[0], loads


def pointer_layout_conversions(compiled) -> int:
    """How many ``ttg.convert_layout`` of pointer tensors the compiled kernel has. Each moves a whole tile of
    64-bit addresses through shared memory: two per band tile when the index table is read along the other
    axis than the gathers' layout (common.INDEX_ALONG_FAST_AXIS)."""
    return sum(1 for line in compiled.asm["ttgir"].splitlines() if "ttg.convert_layout" in line and "!tt.ptr" in line)


def _source_lines(fn, *needles: str) -> dict[tuple[str, int], str]:
    """{(file name, line number): needle} of the lines of jit function ``fn`` that contain each needle."""
    lines, first = inspect.getsourcelines(fn.fn)
    name = os.path.basename(inspect.getsourcefile(fn.fn))
    return {(name, first + k): needle for k, line in enumerate(lines) for needle in needles if needle in line}


def _access_sites(ttgir: str):
    """(layout attributes, (file name, line) of each call of the chain, innermost first) of every 2-D ``tt.load``
    and ``tt.store`` of a TTGIR."""
    layouts = dict(re.findall(r"^(#[\w.]+) = #ttg\.blocked<\{(.*)\}>", ttgir, re.M))
    locs = dict(re.findall(r"^(#loc\d*) = loc\((.*)\)$", ttgir, re.M))

    def chain(ref, depth=0):
        text = locs.get(ref, "")
        site = re.match(r'"([^"]*)":(\d+):\d+', text)
        if site:
            return [(os.path.basename(site.group(1)), int(site.group(2)))]
        call = re.match(r"callsite\((#loc\d+) at (#loc\d+)\)", text)
        if call and depth < 64:
            return chain(call.group(1), depth + 1) + chain(call.group(2), depth + 1)
        named = re.match(r'"[^"]*"\((#loc\d+)\)', text)
        return chain(named.group(1), depth + 1) if named and depth < 64 else []

    for line in ttgir.splitlines():
        access = re.search(r"tt\.(?:load|store) .*: tensor<\d+x\d+x!tt\.ptr<\w+>, (#[\w.]+)>.*loc\((#loc\d+)\)\s*$",
                           line)
        if access and access.group(1) in layouts:
            yield layouts[access.group(1)], chain(access.group(2))


def gather_lanes(compiled, name: str, keys_on_threads: bool) -> list[tuple[str, bool]]:
    """(term, dense) for every c2p / p2c gather and every store of dS by distance into BAND_Q in the band tiles of
    kernel ``name`` compiled with INDEX_REVERSED = ``keys_on_threads`` (either band mode): whether a warp's lanes
    run along the index its addresses are dense in (keys for C2P[i, d(i - j)] and BAND_Q[i, i - j + c], queries
    for P2C[j, d(i - j)]), read off the access's layout (the tensor axis the first lanes run along,
    ``order[0]``) and the axis its tile puts that index on (common.position_bias, common.gathered_term,
    common.store_by_distance: transposed in band mode "oriented", told by its gathers, where keys are off the
    lanes' axis). Under band mode "gather" one of the two gathered terms is not
    (common.INDEX_ALONG_FAST_AXIS); under "oriented" all are, if this Triton lays such accesses out as
    INDEX_ALONG_FAST_AXIS says. (BAND_K's stores are contiguous along queries: Triton lays them out by that.)"""
    query_axis = 1 if name == "dkdv" else 0
    sites = {**_source_lines(common.position_bias, "C2P + i * two_s", "P2C + j * two_s"),
             **_source_lines(common.gathered_term, "SCORES + i * two_s", "SCORES + j * two_s"),
             **_source_lines(common.store_by_distance, "tl.store(BAND")}
    accesses = []
    for layout, lines in _access_sites(compiled.asm["ttgir"]):
        needle = next((sites[n] for n in lines if n in sites), None)
        if needle is not None:
            accesses.append((layout, needle))
    oriented = any(needle.startswith("SCORES") for _, needle in accesses)
    found = []
    for layout, needle in accesses:
        term = "band_q" if "store" in needle else "c2p" if "+ i * two_s" in needle else "p2c"
        if term == "band_q":
            transposed = oriented and not keys_on_threads
        else:
            transposed = oriented and ((term == "c2p") != keys_on_threads)
        queries_on = 1 - query_axis if transposed else query_axis
        dense = queries_on if term == "p2c" else 1 - queries_on
        order = [int(x) for x in re.search(r"order = \[(\d+), (\d+)\]", layout).groups()]
        lanes = [int(x) for x in re.search(r"threadsPerWarp = \[(\d+), (\d+)\]", layout).groups()]
        lane_axis = order[0] if lanes[order[0]] > 1 else order[1]
        found.append((term, lane_axis == dense))
    return found


def pipelined_copies(compiled) -> int:
    """How many asynchronous global -> shared copies (cp.async, software pipelining of the tile loads) the
    compiled kernel has. Loads Triton cannot prove contiguous and aligned (e.g. rows with an unknown inner
    stride) are not pipelined."""
    return compiled.asm["ttgir"].count("ttg.async_copy_global_to_local")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--all", action="store_true", help="every config of the autotune lists")
    parser.add_argument("--loops", action="store_true", help="also the SASS instructions of each loop body")
    args = parser.parse_args(argv)
    if INTERPRET:
        raise SystemExit("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    variants = [
        dict(dtype=torch.bfloat16, head_dim=64),
        dict(dtype=torch.bfloat16, head_dim=64, HAS_MASK=False),
        dict(dtype=torch.float16, head_dim=128, DROPOUT=True, MASKED_ZERO=True),
        dict(dtype=torch.float32, head_dim=48, HAS_P2C=False, PREC="tf32"),
        dict(dtype=torch.bfloat16, head_dim=64, HAS_C2P=False, HAS_P2C=False, HAS_MASK=False),
    ]
    for name, kernel in KERNELS.items():
        for variant in variants:
            configs = kernel.configs if args.all else [default_config(name, variant["dtype"], variant["head_dim"], arch=args.arch)]
            for config in configs:
                compiled = compile_kernel(name, config, arch=args.arch, **variant)
                report = ptxas_report(compiled, args.arch)
                report["pointer_layout_conversions"] = pointer_layout_conversions(compiled)
                report["pipelined_copies"] = pipelined_copies(compiled)
                if args.loops:
                    report["loop_instructions"] = loop_instructions(compiled, args.arch)
                shown = {k: (str(v).removeprefix("torch.") if k == "dtype" else v) for k, v in variant.items()}
                print(name, config, shown, report, flush=True)


if __name__ == "__main__":
    main()
