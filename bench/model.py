"""Model benchmarks: a training step and inference, deberta_fast against transformers (same weights, same inputs).

- train: forward + backward + AdamW step of DebertaV2ForSequenceClassification (dropout on, as in
  fine-tuning); tokens per second and peak memory.
- infer: no_grad forward of DebertaV2Model; latency and tokens per second, peak memory.

Configs: v3-base (hidden 768, 12 layers, 12 heads) and v3-large (1024, 24, 16), vocab 128100, buckets 256,
max relative 512, c2p|p2c, share_att_key, norm_rel_ebd layer_norm, random init. B * N is held constant.
Before timing, each deberta_fast provider's loss (train) or output (infer) is checked against transformers'
on the first batch; a provider that disagrees is recorded as a mismatch and not timed.

    python bench/model.py                                   # CPU smoke run: small model, N 128 and 256
    python bench/model.py --device cuda --configs v3-base,v3-large --seqlens 128,256,512,1024,2048,4096
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import environment, progress, results_dir, usable_backends, write_json  # noqa: E402

CONFIGS = {
    "v3-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "v3-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256),
}
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def hf_config(name: str, vocab: int):
    from transformers import DebertaV2Config

    return DebertaV2Config(
        vocab_size=vocab, **CONFIGS[name], max_position_embeddings=512, relative_attention=True,
        position_buckets=256, max_relative_positions=512, pos_att_type="p2c|c2p", share_att_key=True,
        norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, num_labels=2,
    )


def build(provider: str, directory: Path, task: str, device, dtype):
    """provider: "transformers" or "df-<backend>"."""
    if provider == "transformers":
        import transformers

        cls = transformers.DebertaV2ForSequenceClassification if task == "train" else transformers.DebertaV2Model
        model = cls.from_pretrained(directory, dtype=torch.float32)
    else:
        import deberta_fast

        cls = deberta_fast.DebertaV2ForSequenceClassification if task == "train" else deberta_fast.DebertaV2Model
        model = cls.from_pretrained(directory, attn_backend=provider.removeprefix("df-"))
    # mixed precision as users train: float32 master weights under autocast on CUDA; CPU runs in float32
    return model.to(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_case(provider, directory, task, N, B, args, device, reference) -> dict:
    row = dict(provider=provider, task=task, N=N, B=B, tokens=B * N)
    model = None
    try:
        model = build(provider, directory, task, device, DTYPES[args.dtype])
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(5, args.vocab, (B, N), generator=g).to(device)
        mask = torch.ones(B, N, dtype=torch.long, device=device)
        labels = torch.randint(0, 2, (B,), generator=g).to(device)
        amp = torch.autocast("cuda", dtype=DTYPES[args.dtype]) if device.type == "cuda" and args.dtype != "float32" \
            else torch.autocast("cpu", enabled=False)
        if task == "train":
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

            def step():
                with amp:
                    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                return loss

            model.eval()  # the check: dropout off, one forward
            with torch.no_grad(), amp:
                check = model(input_ids=ids, attention_mask=mask, labels=labels).loss.float()
            model.train()
        else:
            model.eval()

            def step():
                with torch.no_grad(), amp:
                    return model(input_ids=ids, attention_mask=mask).last_hidden_state

            with torch.no_grad(), amp:
                check = step().float()
        if reference is not None:
            err = (check - reference).abs().max().item()
            bound = args.tolerance * max(1.0, reference.abs().max().item())
            row["max_err_vs_transformers"] = err
            if not err <= bound:
                row.update(status="mismatch", note=f"max error {err:.3e} > {bound:.3e}; not timed")
                return row
        for _ in range(args.warmup):
            step()
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.rep):
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            times.append(time.perf_counter() - t0)
        median = statistics.median(times)
        row.update(status="ok", times_s=times, median_s=median, tokens_per_s=B * N / median)
        if device.type == "cuda":
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        row["_check"] = check
    except torch.cuda.OutOfMemoryError as exc:
        row.update(status="oom", note=str(exc).splitlines()[0][:300])
    except Exception as exc:
        row.update(status="error", note=f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
        if args.verbose:
            traceback.print_exc()
    finally:
        model = None  # free it before the next provider is built
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def table(rows: list[dict]) -> str:
    lines = []
    for task in ("train", "infer"):
        sub = [r for r in rows if r["task"] == task]
        if not sub:
            continue
        lines.append(f"\n{task}: tokens/s (peak GiB on CUDA); x = speed relative to transformers\n")
        lines.append("| config | N | provider | tokens/s | peak GiB | x |")
        lines.append("|---|---|---|---|---|---|")
        for r in sub:
            base = next((b for b in sub if b["provider"] == "transformers" and b["N"] == r["N"]
                         and b["config"] == r["config"] and b.get("status") == "ok"), None)
            if r["status"] != "ok":
                lines.append(f"| {r['config']} | {r['N']} | {r['provider']} | {r['status']} | | |")
                continue
            ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}" if base else ""
            mem = f"{r['peak_memory_gib']:.2f}" if "peak_memory_gib" in r else ""
            lines.append(f"| {r['config']} | {r['N']} | {r['provider']} | {r['tokens_per_s']:.0f} | {mem} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="autocast dtype (CUDA); CPU runs float32")
    p.add_argument("--configs", default=None, help="comma-separated from " + ", ".join(CONFIGS))
    p.add_argument("--tasks", default="train,infer")
    p.add_argument("--seqlens", default=None)
    p.add_argument("--tokens", type=int, default=None, help="B * N (default 16384 CUDA, 512 CPU)")
    p.add_argument("--vocab", type=int, default=None, help="default 128100 (CUDA), 1000 (CPU)")
    p.add_argument("--providers", default=None, help="default: transformers and every usable deberta_fast backend")
    p.add_argument("--rep", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--tolerance", type=float, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device")
    device = torch.device(args.device)
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    configs = (args.configs or ("v3-base,v3-large" if cuda else "tiny")).split(",")
    seqlens = [int(x) for x in (args.seqlens or ("128,256,512,1024,2048,4096" if cuda else "128,256")).split(",")]
    args.tokens = args.tokens or (16384 if cuda else 512)
    args.vocab = args.vocab or (128100 if cuda else 1000)
    args.rep = args.rep or (10 if cuda else 2)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    args.tolerance = args.tolerance or (5e-2 if (cuda and args.dtype != "float32") else 1e-4)
    if args.providers:
        providers = args.providers.split(",")
    else:
        head_dims = {CONFIGS[c]["hidden_size"] // CONFIGS[c]["num_attention_heads"] for c in configs}
        per_dim = [usable_backends(device, d) for d in sorted(head_dims)]
        providers = ["transformers"] + [f"df-{n}" for n in per_dim[0] if all(n in u for u in per_dim)]
    out = Path(args.out) if args.out else results_dir() / f"model_{args.device}_{args.dtype}.json"

    import transformers

    rows = []
    cases = [(c, t, n) for c in configs for t in args.tasks.split(",") for n in seqlens]
    with tempfile.TemporaryDirectory() as tmp:
        for name in configs:
            torch.manual_seed(0)
            transformers.DebertaV2ForSequenceClassification(hf_config(name, args.vocab)).save_pretrained(
                Path(tmp) / name)
        for name, task, N in progress(cases, "model cases"):
            B = max(1, args.tokens // N)
            reference = None
            for provider in providers:
                row = run_case(provider, Path(tmp) / name, task, N, B, args, device, reference)
                row["config"] = name
                check = row.pop("_check", None)
                if provider == "transformers" and check is not None:
                    reference = check
                rows.append(row)
            write_json(out, {"benchmark": "model", "env": environment(), "args": vars(args), "rows": rows})
    print(table(rows))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
