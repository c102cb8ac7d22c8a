"""Tokenizer throughput: deberta_fast.DebertaV2Tokenizer against transformers' DebertaV2Tokenizer.

Both tokenizers are built from the same spm.model and run side by side in one process, interleaved
repeat by repeat, on the same corpus; before timing, every scenario's outputs are checked to be equal.
The metric is texts per second (corpus size / median wall time of encoding the whole corpus in batches).

Without --model, a realistic 8000-piece Unigram model (DeBERTa's [PAD]/[CLS]/[SEP]/[UNK] layout) is
trained on a generated corpus first; the script says so. transformers' tokenizer is built from the model's
pieces and scores, which is what its from_pretrained does with an spm.model (and needs no protobuf).

    python bench/tokenizer.py                       # writes bench/results/tokenizer_cpu.json
    python bench/tokenizer.py --model path/to/spm.model --texts 4096 --batch-size 256

Data first: the JSON holds environment (versions, git sha, CPU), raw timings and medians; the table is
printed from it.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

_COMMON = (
    "the of and to a in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no will more can said who what its "
    "about into than them only other new some could time these two may then do first any my now such like our"
).split()
_SYLLABLES = (
    "ka ri to ne ma su lo pe qu ar en th in er an re on at es or ch sh st ing ed ly tion pro con de com ex "
    "ver al ment ness ize ous ive ab ob sub trans inter"
).split()
_EXTRA = ["café", "naïve", "résumé", "Zürich", "São", "東京", "中文", "日本語", "😀", "🚀", "e-mail", "U.S.", "don't", "it's"]


def generate_corpus(n_lines: int, seed: int) -> list[str]:
    """Pseudo-English sentences: Zipf-distributed words, capitals, numbers, punctuation, some non-ASCII."""
    rng = random.Random(seed)
    words = _COMMON + ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(20000)]
    weights = [1.0 / (rank + 1) for rank in range(len(words))]
    lines = []
    for _ in range(n_lines):
        sentence = rng.choices(words, weights, k=rng.randint(5, 30))
        sentence[0] = sentence[0].capitalize()
        if rng.random() < 0.3:
            sentence.insert(rng.randrange(len(sentence)), str(rng.randint(0, 99999)))
        if rng.random() < 0.15:
            sentence.insert(rng.randrange(len(sentence)), rng.choice(_EXTRA))
        if rng.random() < 0.2:
            i = rng.randrange(len(sentence))
            sentence[i] = f"({sentence[i]})" if rng.random() < 0.5 else sentence[i] + ","
        lines.append(" ".join(sentence) + rng.choice([".", ".", ".", "?", "!", ";"]))
    return lines


def train_model(directory: str, vocab_size: int, seed: int) -> str:
    """Train a DeBERTa-layout Unigram SentencePiece model on a generated corpus; returns its path."""
    import sentencepiece

    corpus = os.path.join(directory, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as handle:
        handle.write("\n".join(generate_corpus(30000, seed)))
    prefix = os.path.join(directory, "spm")
    sentencepiece.SentencePieceTrainer.train(
        input=corpus,
        model_prefix=prefix,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0,
        bos_id=1,
        eos_id=2,
        unk_id=3,
        pad_piece="[PAD]",
        bos_piece="[CLS]",
        eos_piece="[SEP]",
        unk_piece="[UNK]",
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )
    return prefix + ".model"


def build_texts(n: int, seed: int) -> tuple[list[str], list[str], list[str]]:
    """Documents of 1-12 sentences (about 600 characters on average), short questions, long contexts."""
    rng = random.Random(seed + 1)
    sentences = generate_corpus(20000, seed + 2)
    texts = [" ".join(rng.choices(sentences, k=rng.randint(1, 12))) for _ in range(n)]
    questions = [rng.choice(sentences)[: rng.randint(20, 80)] for _ in range(n)]
    contexts = [" ".join(rng.choices(sentences, k=rng.randint(10, 40))) for _ in range(n)]
    return texts, questions, contexts


def environment() -> dict:
    import numpy
    import sentencepiece
    import tokenizers
    import torch
    import transformers

    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        sha, dirty = None, None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "sentencepiece": sentencepiece.__version__,
        "numpy": numpy.__version__,
        "git_sha": sha,
        "git_dirty": dirty,
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def scenarios(texts, questions, contexts, args) -> list[dict]:
    n_single = min(len(texts), 512)
    return [
        {
            "name": "batch_max_length_pt",
            "what": f"batches of {args.batch_size}, padding='max_length', truncation, max_length={args.max_length}, pt",
            "inputs": (texts, None),
            "kwargs": dict(padding="max_length", truncation=True, max_length=args.max_length, return_tensors="pt"),
        },
        {
            "name": "batch_longest_pt",
            "what": f"batches of {args.batch_size}, padding='longest', truncation, max_length={args.max_length}, pt",
            "inputs": (texts, None),
            "kwargs": dict(padding="longest", truncation=True, max_length=args.max_length, return_tensors="pt"),
        },
        {
            "name": "batch_longest_lists",
            "what": f"batches of {args.batch_size}, padding='longest', truncation, max_length={args.max_length}, lists",
            "inputs": (texts, None),
            "kwargs": dict(padding="longest", truncation=True, max_length=args.max_length),
        },
        {
            "name": "pairs_overflow_pt",
            "what": "question/context pairs, only_second, max_length=384, stride=128, overflow rows, pt",
            "inputs": (questions, contexts),
            "kwargs": dict(
                padding="max_length",
                truncation="only_second",
                max_length=384,
                stride=128,
                return_overflowing_tokens=True,
                return_tensors="pt",
            ),
        },
        {
            "name": "batch_offsets_pt",
            "what": f"batches of {args.batch_size}, padding='longest', truncation, offsets mapping, pt",
            "inputs": (texts, None),
            "kwargs": dict(
                padding="longest",
                truncation=True,
                max_length=args.max_length,
                return_offsets_mapping=True,
                return_tensors="pt",
            ),
        },
        {
            "name": "single_text_calls",
            "what": f"{n_single} calls of one text each, truncation, max_length={args.max_length}, lists",
            "inputs": (texts[:n_single], None),
            "kwargs": dict(truncation=True, max_length=args.max_length),
            "single": True,
        },
    ]


def run_scenario(tokenizer, scenario: dict, batch_size: int):
    firsts, seconds = scenario["inputs"]
    kwargs = scenario["kwargs"]
    if scenario.get("single"):
        return [tokenizer(text, **kwargs) for text in firsts]
    out = []
    for start in range(0, len(firsts), batch_size):
        pair = None if seconds is None else seconds[start : start + batch_size]
        out.append(tokenizer(firsts[start : start + batch_size], pair, **kwargs))
    return out


def outputs_equal(ours, theirs) -> bool:
    import torch

    for a, b in zip(ours, theirs):
        a, b = dict(a), dict(b)
        if set(a) != set(b):
            return False
        for key in b:
            x, y = a[key], b[key]
            if isinstance(y, torch.Tensor):
                if not (isinstance(x, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)):
                    return False
            elif x != y:
                return False
    return len(ours) == len(theirs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="spm.model to use; without it an 8000-piece model is trained first")
    parser.add_argument("--vocab-size", type=int, default=8000, help="pieces of the trained model")
    parser.add_argument("--texts", type=int, default=4096, help="texts in the corpus")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON output path (default: bench/results/tokenizer_cpu.json, "
                        "or under $DEBERTA_FAST_BENCH_RESULTS)")
    args = parser.parse_args(argv)

    import sentencepiece
    from transformers import DebertaV2Tokenizer as TransformersTokenizer

    from deberta_fast.tokenizer import DebertaV2Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        model_note = f"given: {args.model}"
        model_path = args.model
        if model_path is None:
            started = time.perf_counter()
            model_path = train_model(tmp, args.vocab_size, args.seed)
            model_note = (
                f"no --model given: trained a {args.vocab_size}-piece Unigram model on a generated corpus "
                f"({time.perf_counter() - started:.1f} s)"
            )
        print(model_note)
        processor = sentencepiece.SentencePieceProcessor(model_file=model_path)
        vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
        theirs = TransformersTokenizer(vocab=vocab, unk_id=processor.unk_id())
        ours = DebertaV2Tokenizer(model_path)

    texts, questions, contexts = build_texts(args.texts, args.seed)
    env = environment()
    results = []
    for scenario in scenarios(texts, questions, contexts, args):
        n_texts = len(scenario["inputs"][0])
        identical = outputs_equal(run_scenario(ours, scenario, args.batch_size), run_scenario(theirs, scenario, args.batch_size))
        times = {"deberta_fast": [], "transformers": []}
        for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
            for name, tokenizer in (("transformers", theirs), ("deberta_fast", ours)):
                gc.collect()  # as timeit: no garbage from the previous run, no collection while timing
                gc.disable()
                try:
                    started = time.perf_counter()
                    run_scenario(tokenizer, scenario, args.batch_size)
                    times[name].append(time.perf_counter() - started)
                finally:
                    gc.enable()
        row = {"scenario": scenario["name"], "what": scenario["what"], "texts": n_texts, "identical_outputs": identical}
        for name, samples in times.items():
            ordered = sorted(samples)
            median = statistics.median(samples)
            row[name] = {
                "times_s": samples,
                "median_s": median,
                "p10_s": ordered[int(0.1 * (len(ordered) - 1))],
                "p90_s": ordered[int(round(0.9 * (len(ordered) - 1)))],
                "texts_per_s": n_texts / median,
            }
        row["speedup"] = row["transformers"]["median_s"] / row["deberta_fast"]["median_s"]
        results.append(row)

    report = {
        "benchmark": "tokenizer",
        "metric": "texts per second = corpus texts / median wall time to encode the corpus (higher is better)",
        "environment": env,
        "config": {
            "model": model_note,
            "vocab_size": processor.get_piece_size(),
            "texts": args.texts,
            "avg_text_chars": sum(map(len, texts)) / len(texts),
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "repeats": args.repeats,
            "seed": args.seed,
            "threads": "both use every usable CPU (sentencepiece thread pool / tokenizers rayon)",
            "timing": "interleaved repeats; gc collected before and disabled during each timed run (as timeit)",
        },
        "results": results,
    }
    from common import results_dir

    out = Path(args.out) if args.out else results_dir() / "tokenizer_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(out.suffix + ".tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_out, out)

    print(f"{env['cpu']} ({env['cpus_usable']} CPUs), transformers {env['transformers']}, "
          f"sentencepiece {env['sentencepiece']}, git {str(env['git_sha'])[:12]}")
    header = f"{'scenario':24s} {'texts':>6s} {'transformers t/s':>17s} {'deberta_fast t/s':>17s} {'speedup':>8s}  same"
    print(header)
    print("-" * len(header))
    for row in results:
        print(
            f"{row['scenario']:24s} {row['texts']:6d} {row['transformers']['texts_per_s']:17.0f} "
            f"{row['deberta_fast']['texts_per_s']:17.0f} {row['speedup']:7.2f}x  {row['identical_outputs']}"
        )
    print(f"wrote {out}")
    return 0 if all(row["identical_outputs"] for row in results) else 1


if __name__ == "__main__":
    sys.exit(main())
