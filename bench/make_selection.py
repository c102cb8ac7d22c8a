"""Write deberta_fast/backends/measured.py, the table behind backend="auto" on CUDA, from recorded benchmarks.

    python bench/make_selection.py [JSON ...]     # default: SOURCES, the committed runs

For every recorded (GPU capability, dtype, head dim, mode, N) of the op-level benchmark it keeps the fused
deberta_fast backends (df-cuda, df-triton) that ran and agreed with the reference, fastest (median) first.
Modes: "fwd" (no gradient) and "fwd_bwd" (training).

From the rows of the Triton backend's variant providers (bench/common.py TRITON_VARIANTS: band gather / oriented /
bias x backward split / fused, ``bash bench/gpu_suite.sh variants``) it also records TRITON_VARIANTS, the times the
backend compares when DEBERTA_FAST_TRITON_BAND / _BACKWARD are unset (kernels/common.py triton_variant): per
shape, "fwd" holds each band mode's forward time (the faster of its two rows: the forward does not depend on
the backward variant) and "bwd" each variant's forward+backward time less its band mode's forward time (whole
forward+backward times where a band mode's forward was not measured in the same run).

tests/test_selection.py checks that the committed tables are what this script makes of the committed JSON.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # deberta_fast, for a checkout not installed
sys.path.insert(0, str(ROOT / "bench"))

from common import TRITON_VARIANTS, generate_from_json, write_generated  # noqa: E402

TARGET = ROOT / "deberta_fast" / "backends" / "measured.py"
FUSED = ("df-cuda", "df-triton")
# The committed op-level runs that measured both fused backends in the same run (a run of one backend alone,
# such as attention_cuda_bfloat16_triton_aligned.json, is not a comparison and is left out).
SOURCES = [ROOT / "bench" / "results" / name for name in (
    "attention_cuda_bfloat16.json", "attention_cuda_float16.json", "attention_cuda_bfloat16_d128.json",
    "attention_cuda_float32.json", "attention_cuda_bfloat16_variants.json",
)]
MODES = ("fwd", "fwd_bwd")


def selection_table(records: list[dict]) -> dict:
    """{(capability, dtype, head_dim): {mode: [(N, (backend, ...)), ...]}} from benchmark JSON records."""
    times = defaultdict(dict)
    for record in records:
        capability = record["env"].get("gpu_capability")
        if capability is None:
            continue
        for row in record["rows"]:
            if (row.get("level") != "op" or row.get("provider") not in FUSED or row.get("mode") not in MODES
                    or row.get("status") != "ok" or row.get("padded")):
                continue
            key = (capability, row["dtype"], row["D"])
            times[(key, row["mode"], row["N"])][row["provider"].removeprefix("df-")] = row["median_ms"]
    table: dict = defaultdict(lambda: defaultdict(list))
    for (key, mode, n), by_backend in sorted(times.items()):
        table[key][mode].append((n, tuple(sorted(by_backend, key=by_backend.get))))
    return {key: dict(modes) for key, modes in sorted(table.items())}


def variant_table(records: list[dict]) -> dict:
    """{(capability, dtype, head_dim): {"fwd": [(N, {band: ms})], "bwd": [(N, {(band, backward): ms})]}} from the
    op-level rows of the Triton variant providers; a later record's measurement of a shape replaces an
    earlier one's."""
    forward, step = {}, {}
    for record in records:
        capability = record["env"].get("gpu_capability")
        if capability is None:
            continue
        record_fwd, record_step = defaultdict(dict), defaultdict(dict)
        for row in record["rows"]:
            variant = TRITON_VARIANTS.get(row.get("provider"))
            if variant is None or row.get("level") != "op" or row.get("status") != "ok" or row.get("padded"):
                continue
            shape = ((capability, row["dtype"], row["D"]), row["N"])
            if row.get("mode") == "fwd":
                times = record_fwd[shape]
                times[variant[0]] = min(times.get(variant[0], row["median_ms"]), row["median_ms"])
            elif row.get("mode") == "fwd_bwd":
                record_step[shape][variant] = row["median_ms"]
        for shape, times in record_step.items():
            fwd = record_fwd.get(shape, {})
            if all(band in fwd for band, _ in times):
                times = {variant: ms - fwd[variant[0]] for variant, ms in times.items()}
            step[shape] = times
        forward.update(record_fwd)
    table: dict = defaultdict(lambda: defaultdict(list))
    for name, times_of in (("fwd", forward), ("bwd", step)):
        for (key, n), times in sorted(times_of.items()):
            table[key][name].append((n, {v: round(ms, 4) for v, ms in sorted(times.items())}))
    return {key: dict(modes) for key, modes in sorted(table.items())}


def tables(records: list[dict]) -> tuple[dict, dict]:
    return selection_table(records), variant_table(records)


def _render_table(name: str, table: dict) -> list[str]:
    lines = [f"{name} = {{"]
    for key, modes in table.items():
        lines.append(f"    {key!r}: {{")
        for mode, entries in modes.items():
            lines.append(f"        {mode!r}: [")
            lines.extend(f"            {entry!r}," for entry in entries)
            lines.append("        ],")
        lines.append("    },")
    lines.append("}")
    return lines


def render(tables_: tuple[dict, dict], sources: list[str]) -> str:
    fastest, variants = tables_
    lines = [
        '"""The fused backends\' speed order per shape, and the Triton backend\'s variant timings, as the recorded GPU',
        "benchmarks found them (generated by bench/make_selection.py; do not edit by hand).",
        "",
        "Sources: " + "; ".join(sources) + ".",
        '"""',
        "",
        "# (gpu capability, dtype, head dim) -> mode -> [(N, backends fastest first), ...] sorted by N",
        *_render_table("FASTEST", fastest),
        "",
        "# The Triton backend's variants (kernels/common.py triton_variant): (gpu capability, dtype, head dim) ->",
        "# \"fwd\" -> [(N, {band mode: forward ms})], \"bwd\" -> [(N, {(band mode, backward mode): backward ms})]",
        *_render_table("TRITON_VARIANTS", variants),
    ]
    return "\n".join(lines) + "\n"


def generate(paths: list[Path]) -> str:
    return generate_from_json(paths, tables, render)


def main() -> None:
    write_generated(__doc__.splitlines()[0], generate, SOURCES, TARGET, "benchmark")


if __name__ == "__main__":
    main()
