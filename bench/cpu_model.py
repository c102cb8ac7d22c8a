"""CPU model benchmark: deberta_fast (torch backend) against transformers' eager DeBERTa-v2, forward, no_grad.

Both models load the same random-init checkpoint (written once by transformers) and run the same inputs.

- Memory: each provider runs in its own subprocess, so its peak can be read from the kernel: after loading,
  the child returns freed heap memory to the OS (malloc_trim), resets its peak RSS (/proc/self/clear_refs),
  runs its first forward, and reports VmHWM - VmRSS(before) as the forward's peak memory. (After a warm-up
  the allocator's retained pages would hide the forward's allocations.)
- Time: both models in one process, their forwards interleaved (A, B, A, B, ...), so that the noise of a
  shared machine falls on both alike. Reported: each provider's median and quantiles, and the median of the
  per-pair ratios (transformers time / deberta_fast time of adjacent runs). deberta_fast reuses its
  position tables across eval-mode forwards (they depend on weights only); it is also timed with that
  cache cleared before every forward ("deberta_fast-nocache"), the cost a first forward pays.
Outputs are compared before any time is reported.

Writes JSON (environment, raw timings, medians, peak memory, ratio) and prints a table:

    python bench/cpu_model.py                       # base-size v3 config, batch 2, sequence 512
    python bench/cpu_model.py --layers 2 --repeats 3 --out /tmp/quick.json   # a quick look
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import environment, results_dir, write_json  # noqa: E402


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


PROVIDERS = ("transformers", "deberta_fast")
# Timed too: deberta_fast without its eval-mode cache of the position tables (recomputed every forward, as a
# first forward or a training-mode forward pays them). Same model as "deberta_fast"; memory is not re-measured.
NO_CACHE = "deberta_fast-nocache"


def run_child(args: argparse.Namespace) -> None:
    """Load one provider, measure its forward's peak memory, save its output, print one JSON line."""
    import torch

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(args.provider, args.model_dir)
    ids, mask = inputs(args)
    gc.collect()
    _malloc_trim()  # give memory freed while loading back to the OS, so the forward cannot hide in it
    rss_before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state  # the measured (first) forward
    peak = _status_kb("VmHWM")
    torch.save(out, args.output_file)
    print(json.dumps({"provider": args.provider, "peak_rss_increase_mib": (peak - rss_before) / 1024}))


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measurement is then an upper bound on reuse only
        pass


def load(provider: str, model_dir: str):
    import torch

    if provider == "transformers":
        from transformers import DebertaV2Model

        return DebertaV2Model.from_pretrained(model_dir, dtype=torch.float32).eval()
    from deberta_fast import DebertaV2Model

    return DebertaV2Model.from_pretrained(model_dir, attn_backend="torch").eval()


def inputs(args: argparse.Namespace):
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, args.vocab, (args.batch, args.seq), generator=g)
    mask = torch.ones(args.batch, args.seq, dtype=torch.long)
    if args.padded:
        mask[0, args.seq * 3 // 4 :] = 0
    return ids, mask


def time_interleaved(args: argparse.Namespace, model_dir: str) -> dict[str, list[float]]:
    """Alternate the providers' forwards; per-provider wall times in seconds."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    models = {p: load(p, model_dir) for p in PROVIDERS}
    encoder = models["deberta_fast"].encoder

    def no_cache(**kw):
        encoder._cached_tables = None
        return models["deberta_fast"](**kw)

    runs = {**models, NO_CACHE: no_cache}
    names = list(runs)
    ids, mask = inputs(args)
    times = {p: [] for p in names}
    with torch.no_grad():
        for _ in range(args.warmup):
            for m in runs.values():
                m(input_ids=ids, attention_mask=mask)
        for i in range(args.repeats):
            for p in names if i % 2 == 0 else names[::-1]:
                t0 = time.perf_counter()
                runs[p](input_ids=ids, attention_mask=mask)
                times[p].append(time.perf_counter() - t0)
    return times


def make_checkpoint(args: argparse.Namespace, directory: Path) -> None:
    import torch
    from transformers import DebertaV2Config, DebertaV2Model

    torch.manual_seed(0)
    config = DebertaV2Config(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
        intermediate_size=4 * args.hidden, max_position_embeddings=512, relative_attention=True,
        position_buckets=256, max_relative_positions=512, pos_att_type="p2c|c2p", share_att_key=True,
        norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7,
    )
    DebertaV2Model(config).save_pretrained(directory)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--vocab", type=int, default=128100)
    p.add_argument("--padded", action="store_true", help="pad the first sequence to 3/4 of its length")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--out", default=str(results_dir() / "cpu_model.json"))
    p.add_argument("--provider", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--output-file", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.provider:
        run_child(args)
        return 0

    import torch

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"writing a random-init checkpoint ({args.layers} layers, hidden {args.hidden}, vocab {args.vocab}) ...",
              flush=True)
        make_checkpoint(args, tmp / "model")
        outputs = {}
        for provider in PROVIDERS:
            print(f"peak memory of {provider} ...", flush=True)
            out_file = tmp / f"{provider}.pt"
            cmd = [sys.executable, __file__, "--provider", provider, "--model-dir", str(tmp / "model"),
                   "--output-file", str(out_file)]
            for name in ("batch", "seq", "vocab", "threads"):
                cmd += [f"--{name}", str(getattr(args, name))]
            if args.padded:
                cmd.append("--padded")
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                raise SystemExit(f"{provider} failed")
            results[provider] = json.loads(proc.stdout.strip().splitlines()[-1])
            outputs[provider] = torch.load(out_file)
        err = (outputs["deberta_fast"] - outputs["transformers"]).abs().max().item()
        ref_scale = outputs["transformers"].abs().max().item()
        if not err <= 1e-4 * max(1.0, ref_scale):
            raise SystemExit(f"outputs disagree: max abs difference {err:.3e}; not reporting timings")
        print(f"timing both, interleaved, {args.repeats} runs each ...", flush=True)
        times = time_interleaved(args, str(tmp / "model"))

    rows = []
    for provider in (*PROVIDERS, NO_CACHE):
        t = sorted(times[provider])
        rows.append({
            "provider": provider, "median_s": statistics.median(t),
            "p20_s": t[int(0.2 * (len(t) - 1))], "p80_s": t[int(0.8 * (len(t) - 1))], "times_s": times[provider],
            "peak_rss_increase_mib": results[provider]["peak_rss_increase_mib"] if provider in results else None,
        })
    by = {r["provider"]: r for r in rows}
    pair_ratios = [a / b for a, b in zip(times["transformers"], times["deberta_fast"])]
    speedup = statistics.median(pair_ratios)
    speedup_no_cache = statistics.median([a / b for a, b in zip(times["transformers"], times[NO_CACHE])])
    memory_ratio = by["deberta_fast"]["peak_rss_increase_mib"] / max(by["transformers"]["peak_rss_increase_mib"], 1e-9)
    record = {
        "benchmark": "cpu_model_forward",
        "env": environment(),
        "settings": {k: getattr(args, k) for k in ("batch", "seq", "layers", "hidden", "heads", "vocab", "padded",
                                                     "repeats", "warmup", "threads")}
        | {"dtype": "float32", "mode": "no_grad forward", "position_buckets": 256, "max_relative_positions": 512,
           "pos_att_type": "p2c|c2p", "share_att_key": True, "norm_rel_ebd": "layer_norm"},
        "max_abs_output_difference": err,
        "rows": rows,
        "speedup_vs_transformers": speedup,
        "speedup_definition": "median over runs of transformers time / deberta_fast time, adjacent interleaved runs",
        "pair_ratios": pair_ratios,
        "speedup_vs_transformers_without_table_cache": speedup_no_cache,
        "peak_memory_ratio_vs_transformers": memory_ratio,
    }
    write_json(Path(args.out), record)
    print(f"\n{'provider':<20} {'median ms':>10} {'p20 ms':>9} {'p80 ms':>9} {'peak MiB':>9}")
    for r in rows:
        mem = f"{r['peak_rss_increase_mib']:>9.1f}" if r["peak_rss_increase_mib"] is not None else f"{'':>9}"
        print(f"{r['provider']:<20} {1e3 * r['median_s']:>10.1f} {1e3 * r['p20_s']:>9.1f} {1e3 * r['p80_s']:>9.1f} {mem}")
    print(f"\ndeberta_fast is {speedup:.2f}x transformers' speed (median of paired runs; {speedup_no_cache:.2f}x when "
          f"its position tables are recomputed every forward), with {memory_ratio:.2f}x its peak forward memory "
          f"(max |difference| {err:.1e}); written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
