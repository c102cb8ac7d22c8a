"""The cuda kernels' staged band slabs (csrc/score_terms.h) for every CTA tile shape the kernels use, on the host.

The extension's CPU hook (``cuda_staged_terms``, tests/test_ops_cuda.py) runs one square tile with 2S = 16; the
kernels stage tiles of 128 x 64 (8 warps), 128 x 32, 64 x 64, 64 x 32 and, with their rows keys, the backward's
dK/dV tiles, at 2S = 512 for DeBERTa-v3. ``tests/native/staged_terms.cpp`` includes the kernels' own header,
built here with the host's C++ compiler (no CUDA, no torch, no extension build), stages every tile of a sequence
as the kernels do and compares every warp's terms with the gathering code, bit for bit. The shapes are read from
csrc/kernel_traits.h, so a retuned tile is checked too. Skips without a C++ compiler.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from deberta_fast.positions import relative_index_table

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "csrc"
HARNESS = Path(__file__).resolve().parent / "native" / "staged_terms.cpp"


def kernel_tile_shapes() -> list[tuple[int, int, int, int, int]]:
    """(qc, kc, warps, trans, chunk) of every CTA tile csrc/kernel_traits.h configures: a forward's BM queries x BN
    keys; a backward's BR rows x BC columns, as the dQ kernel stages it (BR queries, BC keys) and as dK/dV does (BC
    queries, BR keys, trans: the warps' rows are keys). chunk: 16 bytes of the tile's type (4 float32, 8 half)."""
    text = (CSRC / "kernel_traits.h").read_text()
    shapes = set()
    pattern = r"using Traits = (Fwd|Bwd)Traits<(\w+), D, (\d+), (\d+|\(D <= 64 \? (\d+) : (\d+)\)), (\d+)"
    for kind, elem, rows, cols, small, large, warps in re.findall(pattern, text):
        chunk = 4 if elem == "float" else 8
        for c in ([int(small), int(large)] if small else [int(cols)]):
            r, w = int(rows), int(warps)
            if kind == "Fwd":
                shapes.add((r, c, w, 0, chunk))
            else:
                shapes.add((r, c, w, 0, chunk))  # dQ
                shapes.add((c, r, w, 1, chunk))  # dK/dV
    return sorted(shapes)


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler on PATH")
    exe = tmp_path_factory.mktemp("native") / "staged_terms"
    subprocess.run([compiler, "-O1", "-std=c++17", "-I", str(CSRC), "-o", str(exe), str(HARNESS)], check=True,
                   capture_output=True, text=True)
    return exe


def run_harness(exe, n, buckets, max_rel, shapes):
    """{shape: (compared, mismatched, overflowing chunks)} for the table of the settings at length n."""
    table = relative_index_table(n, buckets, max_rel)
    two_s = 2 * (buckets if buckets > 0 else max_rel)
    lines = [f"{n} {two_s}", " ".join(str(int(d)) for d in table)] + [" ".join(map(str, s)) for s in shapes]
    result = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True, text=True, check=True)
    runs = {}
    for line in result.stdout.splitlines():
        words = line.split()
        runs[tuple(int(x) for x in words[1:6])] = (int(words[7]), int(words[9]), int(words[11]))
    assert set(runs) == set(shapes), result.stdout + result.stderr
    return runs


def test_the_shapes_are_the_kernels():
    shapes = kernel_tile_shapes()
    # forward 128 x 64 (8 warps), 128 x 32 and 64 x 64 (4 warps), float32 64 x 32; backward 64 x 64 / 64 x 32 (half),
    # 64 x 32 / 64 x 16 (float32), each as dQ and as dK/dV
    for shape in [(128, 64, 8, 0, 8), (128, 32, 4, 0, 8), (64, 64, 4, 0, 8), (64, 32, 4, 0, 4), (64, 64, 4, 1, 8),
                  (32, 64, 4, 1, 8), (16, 64, 4, 1, 4), (64, 16, 4, 0, 4)]:
        assert shape in shapes, shapes


@pytest.mark.parametrize("n,buckets,max_rel", [(1100, 256, 512), (300, 8, 32), (97, -1, 24), (17, 0, 8),
                                               (1, 256, 512), (130, 16, 64)])
def test_staged_terms_equal_the_gathers_for_every_kernel_tile(harness, n, buckets, max_rel):
    """Every tile of the sequence (band, saturated, across N), every warp and lane of each kernel tile shape (2S
    a multiple of both chunks, as the slabs need: attention.cpp's staged_slabs): the staged slabs give the
    gathered terms bit for bit, read no slot that no chunk filled, and stage no chunk outside its slab."""
    runs = run_harness(harness, n, buckets, max_rel, kernel_tile_shapes())
    for shape, (compared, mismatched, overflow) in runs.items():
        assert compared > 0 and mismatched == 0 and overflow == 0, (shape, compared, mismatched, overflow)


def test_the_harness_sees_a_table_the_slabs_cannot_serve(harness):
    """Buckets 256 with max relative 128: rows that go down past the linear part, which the slabs' gate
    (cuda_position_geometry's unit_steps) leaves to the gathers. Staged anyway, the terms differ: the comparison
    above can fail."""
    runs = run_harness(harness, 700, 256, 128, [(128, 64, 8, 0, 8), (32, 64, 4, 1, 8)])
    assert all(mismatched > 0 for _, mismatched, _ in runs.values()), runs
