"""Tables and plots made from recorded benchmark JSON (bench/results/*.json): data first, then views.

    python bench/report.py bench/results/attention_cuda_bfloat16.json          # markdown tables to stdout
    python bench/report.py bench/results/attention_cuda_bfloat16.json --plot   # and PNG plots beside the JSON
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from collections import defaultdict
from pathlib import Path


def attention_table(rows: list[dict]) -> str:
    """One markdown table per (level, mode): median ms per provider and N, with the ratio to the floor."""
    out = []
    groups = defaultdict(list)
    for r in rows:
        groups[(r["level"], r.get("mode", "?"))].append(r)
    for (level, mode), group in sorted(groups.items()):
        providers = sorted({r["provider"] for r in group}, key=lambda p: (not p.startswith("df-"), p))
        seqlens = sorted({r["N"] for r in group})
        cell = {(r["provider"], r["N"]): r for r in group}
        out.append(f"\n{level} level, {mode} (median ms; x = ratio to sdpa-floor where measured)\n")
        out.append("| provider | " + " | ".join(f"N={n}" for n in seqlens) + " |")
        out.append("|---|" + "---|" * len(seqlens))
        for p in providers:
            cells = []
            for n in seqlens:
                r = cell.get((p, n))
                floor = cell.get(("sdpa-floor", n))
                if r is None:
                    cells.append("")
                elif r["status"] != "ok":
                    cells.append(r["status"])
                else:
                    text = f"{r['median_ms']:.3g}"
                    if floor and floor.get("status") == "ok" and p != "sdpa-floor":
                        text += f" ({r['median_ms'] / floor['median_ms']:.2f}x)"
                    cells.append(text)
            out.append(f"| {p} | " + " | ".join(cells) + " |")
        notes = [f"- {r['provider']} N={r['N']}: {r['status']}: {r.get('note', '')}" for r in group
                 if r["status"] != "ok"]
        out.extend(sorted(set(notes)))
    return "\n".join(out)


def cpu_model_table(record: dict) -> str:
    """bench/cpu_model.py's run: each provider's forward time and peak memory, then the paired speedup."""
    out = ["\nfull model forward, CPU (seconds; peak memory of the forward)\n",
           "| provider | median s | p20 s | p80 s | peak MiB |", "|---|---|---|---|---|"]
    for r in record["rows"]:
        peak = r.get("peak_rss_increase_mib")
        out.append(f"| {r['provider']} | {r['median_s']:.3g} | {r['p20_s']:.3g} | {r['p80_s']:.3g} | "
                   + (f"{peak:.0f} |" if peak is not None else " |"))
    out.append(f"\nspeedup vs transformers: {record['speedup_vs_transformers']:.2f}x "
               f"({record['speedup_definition']}); without the position-table cache "
               f"{record['speedup_vs_transformers_without_table_cache']:.2f}x; peak memory "
               f"{record['peak_memory_ratio_vs_transformers']:.2f}x transformers'")
    return "\n".join(out)


def tokenizer_table(record: dict) -> str:
    """bench/tokenizer.py's run: texts per second of both tokenizers per scenario."""
    out = [f"\ntokenizer ({record['metric']})\n",
           "| scenario | deberta_fast | transformers | speedup | identical outputs |", "|---|---|---|---|---|"]
    for r in record["results"]:
        out.append(f"| {r['scenario']} | {r['deberta_fast']['texts_per_s']:.0f} | "
                   f"{r['transformers']['texts_per_s']:.0f} | {r['speedup']:.1f}x | {r['identical_outputs']} |")
    return "\n".join(out)


def plot_attention(rows: list[dict], target: Path) -> list[Path]:
    """One PNG per (level, mode): median time against N, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    groups = defaultdict(list)
    for r in rows:
        if r["status"] == "ok":
            groups[(r["level"], r["mode"])].append(r)
    for (level, mode), group in sorted(groups.items()):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for provider in sorted({r["provider"] for r in group}):
            pts = sorted((r["N"], r["median_ms"]) for r in group if r["provider"] == provider)
            ax.plot([n for n, _ in pts], [t for _, t in pts], marker="o", label=provider)
        first = group[0]
        ax.set(xscale="log", yscale="log", xlabel="sequence length N (B*N constant)", ylabel="median ms",
               title=f"{level} {mode}: {first['dtype']}, H={first['H']}, D={first['D']}, {first['device']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        path = target.with_name(f"{target.stem}_{level}_{mode}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+")
    p.add_argument("--plot", action="store_true", help="also write PNG plots of attention results (needs matplotlib)")
    args = p.parse_args(argv)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        p.error("--plot needs matplotlib, which is not installed (pip install matplotlib)")
    for name in args.files:
        path = Path(name)
        record = json.loads(path.read_text())
        env = record.get("env") or record.get("environment", {})
        print(f"# {path.name}: {env.get('gpu') or env.get('cpu')}, torch {env.get('torch')}, "
              f"triton {env.get('triton')}, git {env.get('git_sha')}, {env.get('timestamp')}")
        if record.get("benchmark") == "attention":
            print(attention_table(record["rows"]))
            if args.plot:
                for written in plot_attention(record["rows"], path):
                    print(f"plot: {written}")
        elif record.get("benchmark") == "model":
            from model import table as model_table  # bench/model.py's own table, from the same rows

            print(model_table(record["rows"]))
        elif record.get("benchmark") == "cpu_model_forward":
            print(cpu_model_table(record))
        elif record.get("benchmark") == "tokenizer":
            print(tokenizer_table(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
