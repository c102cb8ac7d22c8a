"""What every benchmark record carries: the environment it ran in, and an atomic JSON writer."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from deberta_fast.cli import RESULTS_ENV  # where default outputs go (``deberta-fast bench``: bench/results/local/)
from deberta_fast.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent


def results_dir() -> Path:
    """The directory a benchmark's default output goes to (:data:`RESULTS_ENV`, else bench/results/)."""
    return Path(os.environ.get(RESULTS_ENV) or ROOT / "bench" / "results")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_sha() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return sha.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict:
    """Versions, hardware, git sha and time of this run."""
    import torch

    env = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": _git_sha(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        # knobs that change what is measured (e.g. DEBERTA_FAST_TRITON_AUTOTUNE=0: default Triton configs)
        "settings": {k: v for k, v in sorted(os.environ.items())
                     if (k.startswith("DEBERTA_FAST_") and k != RESULTS_ENV)
                     or k in ("TRITON_INTERPRET", "TORCH_CUDA_ARCH_LIST")},
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = props.name
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["gpu_capability"] = f"{props.major}.{props.minor}"
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True).stdout.strip() or None
        except OSError:
            env["driver"] = None
    return env


# The Triton backend's variants as op-level benchmark providers: provider -> (DEBERTA_FAST_TRITON_BAND,
# DEBERTA_FAST_TRITON_BACKWARD), both set for the whole forward and backward. bench/make_selection.py turns
# their timings into the backend's per-shape choice when the switches are unset (measured.TRITON_VARIANTS).
TRITON_VARIANTS = {
    "df-triton-gather": ("gather", "split"),
    "df-triton-bias": ("bias", "split"),
    "df-triton-fused": ("gather", "fused"),
    "df-triton-bias-fused": ("bias", "fused"),
    "df-triton-oriented": ("oriented", "split"),
    "df-triton-oriented-fused": ("oriented", "fused"),
}

# The Triton backend with a switch that is not one of the variants above: provider -> its environment (the band and
# backward switches left to the backend's per-shape choice).
TRITON_SWITCHED = {
    # INNER band tiles' position terms loaded where used instead of one tile ahead (kernels/common.py inner_ahead)
    "df-triton-noprefetch": {"DEBERTA_FAST_TRITON_PREFETCH": "0"},
}

# The cuda backend's opt-in variants: provider -> the environment it is measured under (not part of `auto`'s choice).
CUDA_VARIANTS = {
    "df-cuda-staged": {"DEBERTA_FAST_CUDA_BAND": "staged"},  # the band tiles' C2P / P2C staged in shared memory
    # ... and the fp16 / bf16 forward's opt-in tiles (csrc/kernel_traits.h)
    "df-cuda-staged-128x32": {"DEBERTA_FAST_CUDA_BAND": "staged", "DEBERTA_FAST_CUDA_FWD_TILES": "128x32"},
    "df-cuda-staged-64x64": {"DEBERTA_FAST_CUDA_BAND": "staged", "DEBERTA_FAST_CUDA_FWD_TILES": "64x64"},
    "df-cuda-64x64": {"DEBERTA_FAST_CUDA_FWD_TILES": "64x64"},
    # the fp16 / bf16 kernels' products by warpgroup MMA at head dim 64 (csrc/wgmma.cuh; an sm_90a build), also
    # on plain attention (a -plain provider: no position terms, no mask, the floor's problem)
    "df-cuda-wgmma": {"DEBERTA_FAST_CUDA_MMA": "wgmma"},
    "df-cuda-wgmma-staged": {"DEBERTA_FAST_CUDA_MMA": "wgmma", "DEBERTA_FAST_CUDA_BAND": "staged"},
    "df-cuda-wgmma-plain": {"DEBERTA_FAST_CUDA_MMA": "wgmma"},
}


def usable_backends(device, head_dim: int) -> list[str]:
    """The deberta_fast backends that can serve a call with this head dim on ``device``, probed with a tiny
    call of that head dim (the cuda backend takes 32, 64 and 128 only)."""
    import torch

    from deberta_fast.backends import available_backends
    from deberta_fast.backends.call import make_call

    probe = make_call(*[torch.zeros(1, 1, 2, head_dim, device=device)] * 3, position_buckets=4, max_relative_positions=8)
    return [name for name, reasons in available_backends(probe).items() if not reasons]


def source_label(path: Path, record: dict, *fields: str) -> str:
    """How a generated table names one recorded run: its path (relative to the checkout when inside it), the
    GPU, the env ``fields`` given (as "name value") and the date."""
    env = record["env"]
    name = path.relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
    extra = "".join(f", {field} {env.get(field)}" for field in fields)
    return f"{name} ({env.get('gpu')}{extra}, {env.get('timestamp', '')[:10]})"


def generate_from_json(paths: list[Path], table_of, render, label_fields: tuple[str, ...] = ()) -> str:
    """``render(table_of(records), labels)`` of the JSON records at ``paths`` (the generators' common shape)."""
    records = [json.loads(p.read_text()) for p in paths]
    return render(table_of(records), [source_label(p.resolve(), r, *label_fields) for p, r in zip(paths, records)])


def write_generated(description: str, generate, sources: list[Path], target: Path, what: str) -> None:
    """The generators' command line: ``[JSON ...] [--add JSON ...] [--out PATH]``, writing ``generate(paths)``
    atomically: the JSON given, else the committed SOURCES, followed by any ``--add`` (later runs of a shape win;
    the GPU suite's apply steps add a run it just made to the committed ones)."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("json", nargs="*", type=Path, help=f"{what} JSON (default: the committed SOURCES)")
    p.add_argument("--add", nargs="+", type=Path, default=[], help=f"{what} JSON read after the others")
    p.add_argument("--out", type=Path, default=target)
    args = p.parse_args()
    atomic_write_text(args.out, generate(list(args.json or sources) + args.add))
    print(f"written to {args.out}")


def write_json(path: Path, record: dict) -> None:
    """Write ``record`` to ``path`` atomically (parent directories created)."""
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def progress(items, desc: str):
    """Iterate with a progress bar (tqdm when installed, else one line per step on stderr)."""
    items = list(items)
    try:
        from tqdm import tqdm

        yield from tqdm(items, desc=desc, file=sys.stderr)
        return
    except ImportError:
        pass
    for i, item in enumerate(items, 1):
        print(f"[{desc}] {i}/{len(items)}: {item}", file=sys.stderr, flush=True)
        yield item
