"""The ``deberta-fast`` command: ``info`` (versions, device, backends), ``parity`` (numerical checks) and
``bench`` (the benchmarks of a source checkout's bench/ directory).

    deberta-fast info
    deberta-fast parity                 # on the CPU
    deberta-fast parity --device cuda   # every backend that can run on the GPU
    deberta-fast bench                  # the CPU benchmarks: model forward vs transformers, attention
    deberta-fast bench attention --device cuda --dtype bfloat16   # any suite, with its own options
    deberta-fast bench report           # tables of the results written so far (bench/results/local/)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import os
import platform
import sys
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["main"]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _package_version() -> str:
    from deberta_fast.version import __version__

    return __version__


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    import deberta_fast
    from deberta_fast.backends import BACKEND_ENV, available_backends, env_backend

    print(f"deberta_fast   {deberta_fast.__version__}")
    print(f"python         {platform.python_version()} ({platform.machine()})")
    print(f"torch          {torch.__version__} (built for CUDA {torch.version.cuda or 'none'})")
    for package in ("triton", "transformers", "sentencepiece", "safetensors"):
        print(f"{package:<14} {_version(package)}")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        print(f"device         cuda: {props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB)")
    else:
        print(f"device         cpu ({torch.get_num_threads()} threads); no CUDA device")
    try:
        auto = env_backend()
    except ValueError as exc:
        auto = f"invalid ({exc})"
    else:
        auto = f"{auto} ({BACKEND_ENV})" if auto != "auto" else f"auto: chosen per call ({BACKEND_ENV} unset)"
    print(f"'auto' means    {auto}")
    print("backends:")
    for name, reasons in available_backends().items():
        print(f"  {name:<8} " + ("available" if not reasons else "unavailable: " + "; ".join(reasons)))
    # The CUDA extension: built and loadable, for which GPU architectures, can it be compiled just in time.
    try:
        from deberta_fast.backends.cuda_backend import extension_status

        status = extension_status()  # never compiles
    except Exception as exc:  # the backend module itself failed to import
        print(f"cuda extension unknown ({type(exc).__name__}: {exc})")
    else:
        if status["loaded"]:
            line = f"loaded ({status['origin']}; archs {', '.join(status['archs']) or 'unknown'})"
        elif status["built"]:
            line = f"built but not loadable: {status['error']}"
        else:
            line = "not built"
        band = _cuda_switch("DEBERTA_FAST_CUDA_BAND", ("gather", "staged"))
        tiles = _cuda_switch("DEBERTA_FAST_CUDA_FWD_TILES", ("128x64", "128x32", "64x64"))
        mma = _cuda_switch("DEBERTA_FAST_CUDA_MMA", ("mma.sync", "wgmma"))
        print(f"cuda extension {line}; just-in-time build {status['jit']}")
        print(f"cuda switches  band tiles {band} (DEBERTA_FAST_CUDA_BAND: gather or staged); fp16 / bf16 forward "
              f"tiles {tiles} (DEBERTA_FAST_CUDA_FWD_TILES: 128x64, 128x32 or 64x64); products by {mma} "
              "(DEBERTA_FAST_CUDA_MMA: mma.sync or wgmma, head dim 64, an sm_90a build)")
    print(f"triton configs {_triton_settings()}")
    return 0


def _cuda_switch(env: str, values: tuple[str, ...]) -> str:
    """A cuda switch's value as the extension reads it (csrc/attention.cpp env_choice: unset or empty = the
    first value; any other value makes each call raise)."""
    value = os.environ.get(env) or values[0]
    return value if value in values else f"invalid ({value!r}: calls will raise)"


def _triton_settings() -> str:
    """The Triton kernels' block-config mode, the GPUs / dtypes / head dims with recorded tunings, the band,
    backward and prefetch switches (from the environment; "auto" / on where unset) and the shapes whose variants
    were timed."""
    try:
        from deberta_fast.backends import measured
        from deberta_fast.kernels import attention_bwd, common
    except Exception as exc:  # triton missing or broken: the backends line above says why
        return f"unknown ({type(exc).__name__}: {exc})"
    def shapes(keys):
        return ", ".join(f"sm_{cap.replace('.', '')} {dtype} D{dim}" for cap, dtype, dim in sorted(set(keys))) or "none"

    tunings = shapes(key[:3] for key in common.FASTEST)
    variants = shapes(measured.TRITON_VARIANTS)
    if variants == "none":
        variants += f" (auto: {' / '.join(common.DEFAULT_VARIANT)})"

    def setting(read):
        try:
            return read()
        except ValueError as exc:
            return f"invalid ({exc})"

    return (f"autotune {setting(common.autotune_mode)} ({common.AUTOTUNE_ENV}); recorded tunings: {tunings}; "
            f"band {setting(common.band_mode)} ({common.BAND_ENV}); "
            f"backward {setting(attention_bwd.backward_mode)} ({attention_bwd.BACKWARD_ENV}); "
            f"inner band tiles' terms loaded ahead: {setting(lambda: 'on' if common.prefetch_inner() else 'off')} "
            f"({common.PREFETCH_ENV}); timed variants: {variants}")


@dataclass
class Row:
    check: str
    backend: str
    dtype: str
    error: float
    bound: float

    @property
    def ok(self) -> bool:
        return self.error <= self.bound


def _op_rows(device: str) -> Iterator[Row]:
    """Forward and all gradients of every backend able to serve the call, against the float64 torch backend,
    with the rule err <= 2 * err(torch backend in the same dtype) + floor."""
    import torch

    from deberta_fast.backends import available_backends, get_backend
    from deberta_fast.backends.call import make_call
    from deberta_fast.backends.torch_backend import torch_attention

    g = torch.Generator().manual_seed(0)
    B, H, N, D, S = 2, 3, 97, 48, 16
    base = [torch.randn(B, N, H, D, generator=g, dtype=torch.float64).transpose(1, 2) for _ in range(3)]
    base += [torch.randn(H, 2 * S, D, generator=g, dtype=torch.float64) for _ in range(2)]
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, 60:] = False
    grad_out = torch.randn(B, H, N, D, generator=g, dtype=torch.float64)
    opts = dict(position_buckets=S, max_relative_positions=64)

    def run(fn, dtype):
        leaves = [t.detach().to(device=device, dtype=dtype, copy=True).requires_grad_(True) for t in base]
        out = fn(leaves)
        out.backward(grad_out.to(device=device, dtype=dtype))
        return [out.detach()] + [t.grad for t in leaves]

    def with_torch(leaves):
        return torch_attention(make_call(*leaves, mask.to(device), **opts))[0]

    ref = run(with_torch, torch.float64)
    names = ["out", "dq", "dk", "dv", "dpos_key", "dpos_query"]
    dtypes = [torch.float32] + ([torch.bfloat16, torch.float16] if device == "cuda" else [torch.bfloat16])
    probe = make_call(*[t.to(device=device, dtype=torch.float32) for t in base], mask.to(device), **opts)
    for name, reasons in available_backends(probe).items():
        if reasons:
            continue
        backend = get_backend(name)
        for dtype in dtypes:
            low = run(with_torch, dtype)
            got = low if name == "torch" else run(
                lambda leaves: backend.forward(make_call(*leaves, mask.to(device), **opts)), dtype)
            for label, a, lo, r in zip(names, got, low, ref):
                err = (a.double() - r).abs().max().item()
                base_err = (lo.double() - r).abs().max().item()
                floor = 1e-5 if dtype == torch.float32 else 1e-2
                bound = 2 * base_err + floor if name != "torch" else (1e-4 if dtype == torch.float32 else 0.1)
                yield Row(f"op {label}", name, str(dtype).removeprefix("torch."), err, bound)


def _model_rows(device: str) -> Iterator[Row]:
    """A random-init model on each backend against the torch backend, and against transformers when installed."""
    import tempfile

    import torch

    import deberta_fast as df
    from deberta_fast.backends import available_backends
    from deberta_fast.backends.call import make_call

    cfg = dict(vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, relative_attention=True,
               pos_att_type="p2c|c2p", position_buckets=16, max_relative_positions=64, share_att_key=True,
               norm_rel_ebd="layer_norm", position_biased_input=False, conv_kernel_size=3)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 211, (2, 80), generator=g)
    mask = torch.ones(2, 80, dtype=torch.long)
    mask[0, 50:] = 0
    torch.manual_seed(0)
    model = df.DebertaV2ForMaskedLM(df.DebertaV2Config(**cfg, attn_backend="torch")).eval()
    with torch.no_grad():
        ref = model.double()(ids, attention_mask=mask).logits
        model.float()
        scale = ref.abs().max().item()
        try:
            import transformers
        except ImportError:
            transformers = None
        if transformers is not None:
            transformers.utils.logging.disable_progress_bar()
            with tempfile.TemporaryDirectory() as tmp:
                model.save_pretrained(tmp)
                hf = transformers.DebertaV2ForMaskedLM.from_pretrained(tmp).eval()
                hf_logits = hf(ids, attention_mask=mask).logits
            yield Row("model vs transformers", "torch", "float32",
                      (hf_logits.double() - ref).abs().max().item(), 1e-5 * scale + 1e-6)
        model.to(device)
        low = model(ids.to(device), attention_mask=mask.to(device)).logits.double().cpu()
        base_err = (low - ref).abs().max().item()
        probe = make_call(*[torch.zeros(1, 4, 8, 16, device=device)] * 3, position_buckets=16,
                          max_relative_positions=64)
        for name, reasons in available_backends(probe).items():
            if reasons:
                continue
            model.set_attn_backend(name)
            got = model(ids.to(device), attention_mask=mask.to(device)).logits.double().cpu()
            err = (got - ref).abs().max().item()
            bound = 2 * base_err + 1e-5 * scale if name != "torch" else 1e-4 * scale
            yield Row("model vs float64", name, "float32", err, bound)


def cmd_parity(args: argparse.Namespace) -> int:
    import torch

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    print(f"parity on {device}: error = max |x - float64 reference|; bound: a fixed tolerance for the torch "
          "backend, 2 x the torch backend's error in the same dtype + a floor for the others")
    if device == "cuda":
        print("(the first run compiles the Triton kernels for each dtype: a minute or two)")
    print(f"{'check':<22} {'backend':<8} {'dtype':<9} {'error':>10} {'bound':>10}  result", flush=True)
    rows = []
    for r in itertools.chain(_op_rows(device), _model_rows(device)):  # each printed as soon as it is known
        rows.append(r)
        print(f"{r.check:<22} {r.backend:<8} {r.dtype:<9} {r.error:>10.2e} {r.bound:>10.2e}  {'ok' if r.ok else 'FAIL'}",
              flush=True)
    failed = [r for r in rows if not r.ok]
    print(f"{len(rows) - len(failed)} of {len(rows)} checks passed")
    return 1 if failed else 0


BENCH_SUITES = {
    "cpu-model": "cpu_model.py",
    "attention": "attention.py",
    "model": "model.py",
    "tokenizer": "tokenizer.py",
    "report": "report.py",
}
BENCH_HELP = {
    "cpu-model": "the full model forward on the CPU (torch backend, fp32) against transformers' eager model",
    "attention": "the attention op and layer of every backend that runs here, against SDPA and transformers",
    "model": "model training and inference steps against transformers",
    "tokenizer": "the SentencePiece tokenizer against transformers' (a tiny model trained on the fly)",
    "report": "markdown tables (and --plot PNGs) of benchmark JSON: the files named, else this command's results",
}
# Where the bench/ scripts write their JSON when given no --out (bench/common.py results_dir): set to
# bench/results/local/ by `deberta-fast bench`, else bench/results/ (the recorded runs).
RESULTS_ENV = "DEBERTA_FAST_BENCH_RESULTS"


def cmd_bench(args: argparse.Namespace, extra: list[str]) -> int:
    """Run bench/<suite>.py of the source checkout this package was installed from (pip install -e .)."""
    import subprocess
    from pathlib import Path

    bench_dir = Path(__file__).resolve().parent.parent / "bench"
    if not (bench_dir / "common.py").is_file():
        print(f"error: no bench/ directory beside the package ({bench_dir}); the benchmarks run from a source "
              "checkout installed with pip install -e .", file=sys.stderr)
        return 2
    suites = [args.suite] if args.suite else ["cpu-model", "attention"]
    # Results go to bench/results/local/ (git-ignored) unless --out or $DEBERTA_FAST_BENCH_RESULTS says otherwise:
    # bench/results/*.json are the recorded runs the README cites, written by the scripts run directly.
    results = Path(os.environ.get(RESULTS_ENV) or bench_dir / "results" / "local")
    env = dict(os.environ, **{RESULTS_ENV: str(results)})
    for suite in suites:
        cmd = [sys.executable, str(bench_dir / BENCH_SUITES[suite]), *extra]
        if suite == "report" and not [a for a in extra if not a.startswith("-")]:
            found = sorted(results.glob("*.json"))
            if not found and not {"-h", "--help"} & set(extra):
                print(f"error: no benchmark results in {results}: run `deberta-fast bench [suite]` first, or name "
                      f"JSON files (the recorded runs: {bench_dir / 'results'}/*.json)", file=sys.stderr)
                return 2
            cmd += [str(f) for f in found]
        print(f"== {suite}: {' '.join(cmd)}", flush=True)
        rc = subprocess.call(cmd, env=env)
        if rc != 0:
            return rc
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deberta-fast", description="deberta_fast: fused DeBERTa-v2/v3 for PyTorch")
    parser.add_argument("--version", action="version", version=f"deberta-fast {_package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    i = sub.add_parser("info", help="versions, device, and which attention backends can run here (and why not)")
    p = sub.add_parser("parity", help="check every available backend and the model against the float64 reference")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the backends run (cuda: every backend that can run on the GPU; default: cpu)")
    suites = "\n".join(f"  {name:10s} {text}" for name, text in BENCH_HELP.items())
    b = sub.add_parser(
        "bench", add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        help="run benchmarks (default: the CPU model forward and attention); options after the suite go to its script",
        description="Run a benchmark suite of the source checkout (bench/<suite>.py); options after the suite name, "
                    "--help among them, go to its script. JSON results go to bench/results/local/ (git-ignored) "
                    "unless --out or $DEBERTA_FAST_BENCH_RESULTS names another place.\n\nsuites:\n" + suites)
    b.add_argument("suite", nargs="?", choices=list(BENCH_SUITES))
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        if args.suite is None and {"-h", "--help"} & set(extra):
            b.print_help()
            return 0
        return cmd_bench(args, extra)
    if extra:  # the subcommand's usage line with the error, not the top level's
        {"info": i, "parity": p}[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return {"info": cmd_info, "parity": cmd_parity}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
