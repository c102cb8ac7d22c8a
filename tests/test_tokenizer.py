"""deberta_fast.DebertaV2Tokenizer against transformers' DebertaV2Tokenizer and sentencepiece itself.

A tiny SentencePiece Unigram model (DeBERTa's [PAD]/[CLS]/[SEP]/[UNK] layout) is trained once per module
from a generated corpus. transformers' tokenizer is built from the same model's pieces and scores, which
is what its from_pretrained does with an spm.model (that path needs protobuf, not a test dependency).
Inputs whose normalization differs between SentencePiece (NFKC rules in the model file) and transformers
5.x (NFC) are the documented difference: they are checked against sentencepiece instead.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re

import numpy as np
import pytest
import sentencepiece
import torch

from deberta_fast.tokenizer import AddedToken, DebertaV2Tokenizer

SPM_VOCAB = 700
PIECES = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]

# Hand-written inputs: punctuation, digits, whitespace runs, accents (precomposed and combining),
# CJK, emoji, special tokens in text, characters the model has never seen, empty and blank strings.
CORPUS = [
    "Hello world",
    "Hello, world! How are you?",
    " leading and trailing spaces  ",
    "tabs\tand\nnew\r\nlines  and    runs of   spaces",
    "\n\n  \t",
    "",
    " ",
    "x",
    "Numbers: 3.14159, 42, 1,000,000 and 2024-01-31.",
    "E-mail me at someone@example.com (or call +1-555-0100)!",
    "don't won't it's \"quoted\" 'single' [brackets] {braces} <angle>",
    "café naïve résumé Zürich São Paulo",
    "cafe\u0301 nai\u0308ve e\u0301te\u0301",  # combining accents: NFC composes them
    "東京は日本の首都です。中文也可以。",
    "emoji 😀🚀 mixed😀with text",
    "a [MASK] b[SEP]c [CLS][PAD] [UNK]",
    "[MASK]",
    "ĀĀĀ ĀxĀ ȸ unseen characters",
    "UPPER lower MiXeD İstanbul straße",
    "...!!!???---",
    "word" * 40,
    "A long text. " * 60,
]

# Known difference: SentencePiece applies the model file's NFKC rules, transformers 5.x does not.
NFKC_INPUTS = [
    "ﬁne ligature ﬁ",
    "ＡＢＣ full-width ｄｅｆ",
    "circled ① ② ③ digits",
    "no\u00a0break and ideographic\u3000space",
    "zero\u200bwidth",
    "ellipsis… and Ω ohm",
    "control\x01char",
]

_SYLLABLES = "ka ri to ne ma su lo pe qu ar en th in er an re on at es or ch sh st ing ed ly".split()
_WORDS = (
    "the quick brown fox jumps over lazy dog Hello world DeBERTa attention tokenizer model café naïve "
    "résumé Zürich São Paulo 東京 中文 日本語 首都 emoji 😀 🚀 data 12345 3.14 e-mail don't can't it's "
    "UPPER lower MiXeD Istanbul straße Numbers How are you text long word"
).split()


def _training_lines(seed: int = 1234, n: int = 4000) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [
            rng.choice(_WORDS) if rng.random() < 0.45 else "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4)))
            for _ in range(rng.randint(3, 16))
        ]
        lines.append(" ".join(words) + rng.choice([".", "!", "?", ",", ";", ":", " (x)", " [y]", ""]))
    return lines


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("spm")
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(_training_lines()), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(directory / "spm"),
        vocab_size=SPM_VOCAB,
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
        num_threads=2,
        minloglevel=2,
    )
    return str(directory / "spm.model")


@pytest.fixture(scope="module")
def sp(spm_path):
    return sentencepiece.SentencePieceProcessor(model_file=spm_path)


@pytest.fixture(scope="module")
def tok(spm_path) -> DebertaV2Tokenizer:
    return DebertaV2Tokenizer(spm_path)


@pytest.fixture(scope="module")
def hf_factory(sp):
    """Build transformers' tokenizer from the model's pieces, as its from_pretrained does with spm.model."""
    transformers = pytest.importorskip("transformers")
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    controls = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.is_control(i)]

    def make(**kwargs):
        return transformers.DebertaV2Tokenizer(
            vocab=list(vocab), unk_id=sp.unk_id(), additional_special_tokens=controls, **kwargs
        )

    return make


@pytest.fixture(scope="module")
def hf(hf_factory):
    return hf_factory()


def _hf_normalized(hf_tokenizer, text: str) -> str:
    backend = hf_tokenizer.backend_tokenizer
    return "".join(piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)))


def _with_model_rules(hf_tokenizer) -> bool:
    """Whether transformers' tokenizer applies the model's normalization rules (its tokenizer.json or spm.model
    read by from_pretrained), not only its own (a tokenizer built from a vocabulary)."""
    return "Precompiled" in str(hf_tokenizer.backend_tokenizer.normalizer)


def _parity_texts(hf_tokenizer, sp, texts, lower=False):
    """Texts both pipelines normalize alike (special tokens aside): where ids must be identical. For a tokenizer
    without the model's rules, also without a CR LF: it aligns the space a CR LF becomes with the LF, where
    transformers with the rules and deberta_fast align it with the CR (test_crlf_offsets_follow_the_model_rules)."""
    special = re.compile(r"\[(MASK|SEP|CLS|PAD|UNK)\]")
    rules = _with_model_rules(hf_tokenizer)
    keep = []
    for text in texts:
        plain = special.sub(" ", text)
        if "\r\n" in text and not rules:
            continue
        if _hf_normalized(hf_tokenizer, plain) == sp.normalize(plain.lower() if lower else plain):
            keep.append(text)
    return keep


def _equal(a, b) -> bool:
    a, b = dict(a), dict(b)
    if set(a) != set(b):
        return False
    for key, expected in b.items():
        got = a[key]
        if isinstance(expected, torch.Tensor):
            if not (isinstance(got, torch.Tensor) and got.dtype == expected.dtype and torch.equal(got, expected)):
                return False
        elif isinstance(expected, np.ndarray):
            if not (isinstance(got, np.ndarray) and got.dtype == expected.dtype and np.array_equal(got, expected)):
                return False
        elif got != expected:
            return False
    return True


def _random_texts(rng: random.Random, n: int) -> list[str]:
    # no CR LF: the tests compare these with a tokenizer built from a vocabulary (see _parity_texts)
    pool = [text for text in CORPUS[:-2] if "\r\n" not in text] + _training_lines(seed=99, n=200)
    out = []
    for _ in range(n):
        parts = rng.sample(pool, rng.randint(1, 4))
        out.append(rng.choice([" ", "  ", "\n", ""]).join(parts))
    return out


# ---------------------------------------------------------------------------------------------------- vocab


def test_special_token_ids_come_from_the_model_file(tok, sp, hf):
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.mask_token_id == sp.get_piece_size() == tok.vocab_size  # not in the model: appended
    assert len(tok) == tok.vocab_size + 1
    assert tok.all_special_tokens == hf.all_special_tokens
    assert tok.all_special_ids == hf.all_special_ids
    assert (len(tok), tok.vocab_size) == (len(hf), hf.vocab_size)
    assert tok.get_vocab() == hf.get_vocab()
    assert tok.get_added_vocab() == hf.get_added_vocab()
    assert tok.special_tokens_map == hf.special_tokens_map


def test_token_conversions_match_transformers(tok, hf):
    tokens = ["[CLS]", "▁Hello", "not-a-piece", "[MASK]", "x", "▁"]
    assert tok.convert_tokens_to_ids(tokens) == hf.convert_tokens_to_ids(tokens)
    assert tok.convert_tokens_to_ids("[MASK]") == hf.convert_tokens_to_ids("[MASK]")
    ids = list(range(len(tok)))
    assert tok.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
    assert tok.convert_ids_to_tokens(ids, skip_special_tokens=True) == hf.convert_ids_to_tokens(ids, skip_special_tokens=True)
    assert tok.convert_ids_to_tokens(5) == hf.convert_ids_to_tokens(5)
    for text in CORPUS[:16]:
        assert tok.tokenize(text) == hf.tokenize(text)
    assert tok.tokenize("a", "b", add_special_tokens=True) == hf.tokenize("a", "b", add_special_tokens=True)


# ---------------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("do_lower_case", [False, True])
def test_corpus_parity_ids_masks_types_offsets(spm_path, sp, hf_factory, do_lower_case):
    hf = hf_factory(do_lower_case=do_lower_case)
    tok = DebertaV2Tokenizer(spm_path, do_lower_case=do_lower_case)
    texts = _parity_texts(hf, sp, CORPUS + _random_texts(random.Random(0), 60), lower=do_lower_case)
    assert len(texts) == len(CORPUS) - 1 + 60  # the corpus holds no NFKC-affected text, one CR LF
    kwargs = dict(return_offsets_mapping=True, return_special_tokens_mask=True, return_length=True)
    assert _equal(tok(texts, padding=True, **kwargs), hf(texts, padding=True, **kwargs))
    for text in texts[: len(CORPUS)]:  # unbatched calls too
        assert _equal(tok(text, **kwargs), hf(text, **kwargs)), repr(text)
    pairs = list(reversed(texts))
    assert _equal(tok(texts, pairs, **kwargs), hf(texts, pairs, **kwargs))


def _transformers_with_model_rules(tok, directory):
    """transformers' tokenizer for ``tok``'s files saved in ``directory``; the test skips where this transformers
    builds it without the model's normalization rules (before 5.25)."""
    transformers = pytest.importorskip("transformers")
    tok.save_pretrained(directory)
    hf = transformers.DebertaV2Tokenizer.from_pretrained(directory)
    if not _with_model_rules(hf):
        pytest.skip("this transformers builds the tokenizer without the model's normalization rules")
    return hf


CRLF_TEXTS = ["a\r\nb", "\r\nab", "x \r\n y", "a\r\n\r\nb", "two\r\nlines\r\n", "A\r\n\tTab", "dos\r\n\nmixed\n\r\nends"]


@pytest.mark.parametrize("do_lower_case", [False, True])
def test_crlf_offsets_follow_the_model_rules(tmp_path, spm_path, do_lower_case):
    """A CR LF (one grapheme cluster, which the tokenizers library normalizes as one unit) becomes a word
    boundary aligned with its CR, as transformers gives it with the model's normalization rules."""
    tok = DebertaV2Tokenizer(spm_path, do_lower_case=do_lower_case)
    kwargs = dict(return_offsets_mapping=True, add_special_tokens=False)
    assert tok("a\r\nb", **kwargs)["offset_mapping"][2] == (1, 2)  # the CR
    assert tok("a\n\rb", **kwargs)["offset_mapping"][2] == (2, 3)  # no unit: the last of the two
    hf = _transformers_with_model_rules(tok, tmp_path)
    assert tok(CRLF_TEXTS, **kwargs)["offset_mapping"] == hf(CRLF_TEXTS, **kwargs)["offset_mapping"]


# Words, whitespace of every kind SentencePiece folds, and characters its nmt_nfkc rules rewrite; not the
# vertical tab (U+000B), which the rules delete and after which the tokenizers library's offsets are shifted.
MIXED_ALPHABET = ["a", "b", "Hello", "world", ",", ".", " ", "  ", "\r", "\n", "\r\n", "\t", "\x0c", "\u00a0",
                  "\u2028", "\u3000", "\u200b", "e\u0301", " \u0301", "\ufb01", "\uff21", "\u2460", "\u00c9", "\u0130"]


@pytest.mark.parametrize("do_lower_case", [False, True])
def test_random_text_parity_with_the_model_rules(tmp_path, spm_path, do_lower_case):
    """transformers with the model's normalization rules (5.25 applies them where it reads a model's
    tokenizer.json or spm.model) gives deberta_fast's ids and offsets on text of mixed whitespace and
    characters the rules rewrite."""
    tok = DebertaV2Tokenizer(spm_path, do_lower_case=do_lower_case)
    hf = _transformers_with_model_rules(tok, tmp_path)
    rng = random.Random(5)
    texts = ["".join(rng.choice(MIXED_ALPHABET) for _ in range(rng.randint(1, 12))) for _ in range(400)]
    kwargs = dict(return_offsets_mapping=True)
    ours, theirs = tok(texts, **kwargs), hf(texts, **kwargs)
    for i, text in enumerate(texts):
        for key in ("input_ids", "offset_mapping"):
            assert ours[key][i] == theirs[key][i], (key, text)


def test_nfkc_inputs_follow_sentencepiece(tok, sp, hf):
    for text in NFKC_INPUTS:
        assert tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text), repr(text)
        assert tok.tokenize(text) == sp.encode(text, out_type=str)
    # The documented difference: transformers 5.x leaves these characters unnormalized.
    assert _parity_texts(hf, sp, NFKC_INPUTS) == []
    for text in ("ﬁ", "Ａ", "①"):
        assert tok.tokenize(text) != hf.tokenize(text)
    # Offsets stay in range and ordered for them.
    encoded = tok(NFKC_INPUTS, return_offsets_mapping=True, add_special_tokens=False)
    for text, offsets in zip(NFKC_INPUTS, encoded["offset_mapping"]):
        assert all(0 <= s <= e <= len(text) for s, e in offsets)
        assert [s for s, _ in offsets] == sorted(s for s, _ in offsets)


_SETTINGS_RNG = random.Random(7)
_SETTINGS = []
for _ in range(150):
    setting: dict = {"padding": _SETTINGS_RNG.choice([False, True, "longest", "max_length"])}
    if _SETTINGS_RNG.random() < 0.75:
        setting["truncation"] = _SETTINGS_RNG.choice([True, "longest_first", "longest_first", "only_first", "only_second"])
        setting["max_length"] = _SETTINGS_RNG.choice([3, 5, 8, 16, 40, 64, 128])
        if _SETTINGS_RNG.random() < 0.6:
            setting["return_overflowing_tokens"] = True
            setting["stride"] = _SETTINGS_RNG.choice([0, 1, 2, 4])
    elif setting["padding"] == "max_length":
        setting["max_length"] = 24
    if _SETTINGS_RNG.random() < 0.3:
        setting["pad_to_multiple_of"] = _SETTINGS_RNG.choice([2, 4])
    if _SETTINGS_RNG.random() < 0.3:
        setting["padding_side"] = "left"
    setting["add_special_tokens"] = _SETTINGS_RNG.random() < 0.85
    setting["pair"] = _SETTINGS_RNG.random() < 0.5
    setting["truncation_side"] = _SETTINGS_RNG.choice(["right", "left"])
    _SETTINGS.append(setting)


# (transformers' error message, deberta_fast's for the same reason) of the settings both refuse
_SAME_REASONS = [
    (r"Second sequence not provided", r"truncation='only_second' needs a second text"),
    (r"`stride` must be strictly less than|stride set to \d+, which is greater than or equal", r"\bstride\b"),
    (r"not a multiple of pad_to_multiple_of", r"is not a multiple of pad_to_multiple_of"),
    (r"Sequence to truncate too short", r"the text to truncate has \d+ tokens, fewer than"),
]


def _call_both(tok, hf, args, kwargs):
    """Both results, or both exceptions; transformers' Rust panics count as exceptions."""
    results = []
    for tokenizer in (tok, hf):
        try:
            results.append(tokenizer(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - pyo3 PanicException derives from BaseException
            if isinstance(err, (KeyboardInterrupt, SystemExit)):
                raise
            results.append(err)
    return results


@pytest.mark.parametrize("index", range(len(_SETTINGS)))
def test_truncation_padding_overflow_parity(tok, hf, index):
    setting = dict(_SETTINGS[index])
    rng = random.Random(index)
    pair, side = setting.pop("pair"), setting.pop("truncation_side")
    texts = _random_texts(rng, rng.choice([1, 3]))
    pairs = _random_texts(rng, len(texts)) if pair else None
    args = (texts, pairs) if rng.random() < 0.7 else (texts[0], pairs[0] if pairs else None)
    setting.update(return_offsets_mapping=True, return_special_tokens_mask=rng.random() < 0.5)
    tok.truncation_side = hf.truncation_side = side
    try:
        ours, theirs = _call_both(tok, hf, args, setting)
    finally:
        tok.truncation_side = hf.truncation_side = "right"
    # (max_length below the special tokens' count, where transformers skips truncation and deberta_fast raises, is
    # not drawn here: test_bad_arguments has it)
    if isinstance(theirs, BaseException):
        assert isinstance(ours, ValueError), f"transformers raised {theirs!r}, deberta_fast returned"
        # the same reason, where transformers' message is one we know (others: any ValueError, so that an upstream
        # rewording does not fail this test)
        for their_reason, our_reason in _SAME_REASONS:
            if re.search(their_reason, str(theirs)):
                assert re.search(our_reason, str(ours)), (theirs, ours)
        return
    assert not isinstance(ours, BaseException), f"deberta_fast raised {ours!r}"
    assert _equal(ours, theirs)


@pytest.mark.parametrize("return_tensors", ["pt", "np"])
def test_tensor_outputs_match(tok, hf, return_tensors):
    texts = _random_texts(random.Random(3), 6)
    for with_pairs, kwargs in (
        (False, dict(padding=True)),
        (False, dict(padding="max_length", truncation=True, max_length=32)),
        (True, dict(padding=True, truncation="longest_first", max_length=24, stride=4, return_overflowing_tokens=True)),
    ):
        pairs = list(reversed(texts)) if with_pairs else None
        kwargs.update(return_tensors=return_tensors, return_offsets_mapping=True, return_special_tokens_mask=True)
        ours, theirs = tok(texts, pairs, **kwargs), hf(texts, pairs, **kwargs)
        assert _equal(ours, theirs)
        assert ours["input_ids"].dtype == (torch.int64 if return_tensors == "pt" else np.int64)
    single = tok("Hello world", return_tensors="pt")
    assert single["input_ids"].shape == (1, 4) and _equal(single, hf("Hello world", return_tensors="pt"))


def test_very_long_text_with_stride(tok, hf):
    text = " ".join(_training_lines(seed=5, n=400))  # ~25k characters
    kwargs = dict(truncation=True, max_length=128, stride=32, return_overflowing_tokens=True, padding=True,
                  return_offsets_mapping=True)
    ours, theirs = tok(text, **kwargs), hf(text, **kwargs)
    assert len(ours["input_ids"]) > 20
    assert _equal(ours, theirs)
    assert _equal(tok(text), hf(text))


def test_empty_inputs(tok, hf):
    for args in (("",), ([""],), (["", "x"],), (["", ""], ["", "y"]), ("x", "")):
        kwargs = dict(padding=True, return_offsets_mapping=True, return_special_tokens_mask=True)
        assert _equal(tok(*args, **kwargs), hf(*args, **kwargs)), args
    assert tok([])["input_ids"] == []


def test_split_by_punct(spm_path, sp, hf_factory):
    tok = DebertaV2Tokenizer(spm_path, split_by_punct=True)
    hf = hf_factory(split_by_punct=True)
    texts = [re.sub(r"\s+(?=[^\w\s])", "", t) for t in CORPUS + _random_texts(random.Random(4), 40)]
    texts = _parity_texts(hf_factory(), sp, texts)  # and no whitespace before punctuation: see below
    assert len(texts) == len(CORPUS) - 1 + 40  # all but the one CR LF
    kwargs = dict(padding=True, return_offsets_mapping=True)
    assert _equal(tok(texts, **kwargs), hf(texts, **kwargs))
    # Each span between punctuation is segmented on its own, as DeBERTa's tokenizer does; there
    # transformers 5.x keeps a space before punctuation as an extra "▁" token (documented difference).
    text = "a ( b ) , c"
    expected = [i for span in ["a ", "(", " b ", ")", " ", ",", " c"] for i in sp.encode(span)]
    assert tok(text, add_special_tokens=False)["input_ids"] == expected
    assert hf(text, add_special_tokens=False)["input_ids"] != expected


def test_added_tokens(spm_path, sp, hf_factory):
    for lower in (False, True):
        tok = DebertaV2Tokenizer(spm_path, do_lower_case=lower)
        hf = hf_factory(do_lower_case=lower)
        for tokenizer in (tok, hf):
            assert tokenizer.add_tokens(["newword"]) == 1
            tokenizer.add_tokens([AddedToken("<ls>", lstrip=True, rstrip=True)] if tokenizer is tok else
                                 [type(hf.added_tokens_decoder[0])("<ls>", lstrip=True, rstrip=True, normalized=False)])
            assert tokenizer.add_special_tokens({"additional_special_tokens": ["<sp1>"]}) == 1
        assert tok.get_added_vocab() == hf.get_added_vocab()
        texts = ["newword there", "hellonewwordthere", "NEWWORD", "a <ls> b", "a<ls>b", "HI <sp1> there", "<sp1><sp1>", "x<ls>"]
        kwargs = dict(padding=True, return_offsets_mapping=True, return_special_tokens_mask=True)
        assert _equal(tok(texts, **kwargs), hf(texts, **kwargs))
        for text in texts:
            assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == hf.decode(hf(text)["input_ids"], skip_special_tokens=True)
        # Before a normalized added token, trailing space is dropped with the span (documented difference).
        ids = tok("hello newword", add_special_tokens=False)["input_ids"]
        assert ids == sp.encode("hello") + [tok.convert_tokens_to_ids("newword")]
    with pytest.raises(ValueError, match="unknown special token key"):
        tok.add_special_tokens({"banana_token": "x"})


def test_split_special_tokens(tok, sp):
    ids = tok("a [MASK] [CLS]", split_special_tokens=True, add_special_tokens=False)["input_ids"]
    assert ids == sp.encode("a [MASK] [CLS]")
    assert tok.mask_token_id in tok("a [MASK]")["input_ids"]


def test_threads_and_per_text_calls_agree(spm_path, tok):
    texts = _random_texts(random.Random(11), 50)
    one = DebertaV2Tokenizer(spm_path, num_threads=1)
    kwargs = dict(padding=True, return_offsets_mapping=True)
    batched = tok(texts, **kwargs)
    assert _equal(one(texts, **kwargs), batched)
    for i, text in enumerate(texts):
        row = tok(text, return_offsets_mapping=True)
        n = len(row["input_ids"])
        assert batched["input_ids"][i][:n] == row["input_ids"]
        assert batched["offset_mapping"][i][:n] == row["offset_mapping"]
    assert _equal(tok.batch_encode(texts, **kwargs), batched)


# ---------------------------------------------------------------------------------------------------- helpers


def test_encode_and_special_token_helpers(tok, hf):
    a, b = tok("Hello world", add_special_tokens=False)["input_ids"], tok("x y", add_special_tokens=False)["input_ids"]
    assert tok.encode("Hello world", "x y") == hf.encode("Hello world", "x y") == tok.build_inputs_with_special_tokens(a, b)
    assert tok.encode("Hello world") == tok.build_inputs_with_special_tokens(a)
    assert tok.encode("Hello world", return_tensors="pt").shape == (1, len(a) + 2)
    pair = tok("Hello world", "x y", return_special_tokens_mask=True)
    assert tok.get_special_tokens_mask(a, b) == pair["special_tokens_mask"]
    assert tok.create_token_type_ids_from_sequences(a, b) == pair["token_type_ids"]
    assert tok.create_token_type_ids_from_sequences(a) == [0] * (len(a) + 2)
    assert tok.get_special_tokens_mask(pair["input_ids"], already_has_special_tokens=True) == pair["special_tokens_mask"]
    assert tok.num_special_tokens_to_add() == hf.num_special_tokens_to_add()
    assert tok.num_special_tokens_to_add(pair=True) == hf.num_special_tokens_to_add(pair=True)


def test_decode_matches_transformers(tok, hf):
    rng = random.Random(2)
    for _ in range(200):
        ids = [rng.randrange(len(tok)) for _ in range(rng.randrange(0, 12))]
        for skip in (False, True):
            for clean in (False, True):
                kwargs = dict(skip_special_tokens=skip, clean_up_tokenization_spaces=clean)
                assert tok.decode(ids, **kwargs) == hf.decode(ids, **kwargs), ids
    batch = tok(CORPUS[:8], padding=True, return_tensors="pt")["input_ids"]
    assert tok.batch_decode(batch, skip_special_tokens=True) == hf.batch_decode(batch, skip_special_tokens=True)
    assert tok.decode(batch) == hf.decode(batch)
    assert tok.decode(batch[0]) == hf.decode(batch[0])
    assert tok.decode(47) == hf.decode(47)
    text = "Hello world, how are you?"
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


# ---------------------------------------------------------------------------------------------------- files


def test_save_pretrained_is_read_by_transformers_and_back(tmp_path, spm_path, sp):
    transformers = pytest.importorskip("transformers")
    tok = DebertaV2Tokenizer(spm_path, do_lower_case=True, model_max_length=64)
    tok.add_tokens(["newword"])
    tok.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    written = tok.save_pretrained(tmp_path / "saved")
    names = {os.path.basename(p) for p in written}
    assert names == {"spm.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.json"}
    assert sorted(os.listdir(tmp_path / "saved")) == sorted(names)  # no temporary files left behind
    assert (tmp_path / "saved" / "spm.model").read_bytes() == open(spm_path, "rb").read()
    config = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "DebertaV2Tokenizer" and config["do_lower_case"] is True

    hf = transformers.DebertaV2Tokenizer.from_pretrained(tmp_path / "saved")
    texts = _parity_texts(hf, sp, CORPUS, lower=True)
    assert any("\r\n" in text for text in texts) == _with_model_rules(hf)  # 5.25: with the model's rules
    assert hf.do_lower_case and hf.model_max_length == 64
    assert hf.get_added_vocab() == tok.get_added_vocab()
    kwargs = dict(padding=True, return_offsets_mapping=True, verbose=False)
    assert _equal(tok(texts, **kwargs), hf(texts, **kwargs))

    back = DebertaV2Tokenizer.from_pretrained(tmp_path / "saved")
    assert back.get_added_vocab() == tok.get_added_vocab()
    assert (back.do_lower_case, back.model_max_length, back.additional_special_tokens) == (True, 64, ["<extra>"])
    all_texts = CORPUS + NFKC_INPUTS
    assert _equal(back(all_texts, **kwargs), tok(all_texts, **kwargs))

    # tokenizer.json carries the model's normalization rules, so the tokenizers library reproduces
    # SentencePiece's NFKC from it.
    tokenizers = pytest.importorskip("tokenizers")
    fast = tokenizers.Tokenizer.from_file(str(tmp_path / "saved" / "tokenizer.json"))
    for text in NFKC_INPUTS[:3] + CORPUS[:12]:
        assert fast.encode(text).ids == tok(text)["input_ids"], repr(text)


def test_reads_directories_transformers_writes(tmp_path, spm_path, sp, hf_factory):
    # transformers 5.x writes tokenizer.json + tokenizer_config.json, without spm.model.
    hf = hf_factory(do_lower_case=False)
    hf.add_tokens(["newword"])
    hf.save_pretrained(tmp_path / "v5")
    assert "spm.model" not in os.listdir(tmp_path / "v5")
    texts = _parity_texts(hf, sp, CORPUS) + ["newword there"]
    kwargs = dict(padding=True, return_offsets_mapping=True)
    if hasattr(sentencepiece, "ThreadPool"):  # sentencepiece >= 0.2.1 ships its nmt_nfkc rules to Python
        tok = DebertaV2Tokenizer.from_pretrained(tmp_path / "v5")
        assert tok.get_added_vocab() == hf.get_added_vocab()
        assert _equal(tok(texts, **kwargs), hf(texts, **kwargs))
        original = DebertaV2Tokenizer(spm_path)
        assert tok(NFKC_INPUTS)["input_ids"] == original(NFKC_INPUTS)["input_ids"]  # rebuilt with nmt_nfkc rules
    else:
        with pytest.raises(ValueError, match="sentencepiece>=0.2.1"):
            DebertaV2Tokenizer.from_pretrained(tmp_path / "v5")

    # transformers 4.x / DeBERTa hub layout: spm.model, a config without added_tokens_decoder,
    # special_tokens_map.json and added_tokens.json.
    legacy = tmp_path / "v4"
    legacy.mkdir()
    (legacy / "spm.model").write_bytes(open(spm_path, "rb").read())
    (legacy / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False, "vocab_type": "spm", "split_by_punct": False}))
    (legacy / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
        "cls_token": "[CLS]", "mask_token": {"content": "[MASK]", "lstrip": False, "normalized": False, "rstrip": False,
                                             "single_word": False},
    }))
    (legacy / "added_tokens.json").write_text(json.dumps({"[MASK]": SPM_VOCAB}))
    tok = DebertaV2Tokenizer.from_pretrained(legacy)
    assert tok.mask_token_id == SPM_VOCAB and tok.cls_token_id == 1
    assert _equal(tok(texts[:-1], **kwargs), hf(texts[:-1], **kwargs))
    assert tok.init_kwargs == {"vocab_type": "spm"}  # unknown keys are kept for save_pretrained
    tok.save_pretrained(tmp_path / "resaved")
    assert json.loads((tmp_path / "resaved" / "tokenizer_config.json").read_text())["vocab_type"] == "spm"
    assert DebertaV2Tokenizer.from_pretrained(legacy / "spm.model").mask_token_id == SPM_VOCAB


def test_save_is_atomic(tmp_path, tok, monkeypatch):
    target = tmp_path / "out"
    tok.save_pretrained(target)
    before = {name: (target / name).read_bytes() for name in os.listdir(target)}
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    other = DebertaV2Tokenizer(model_proto=tok._model_proto, do_lower_case=True)
    with pytest.raises(OSError, match="disk full"):
        other.save_pretrained(target)
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(os.listdir(target)) == sorted(before)  # no temporary file left behind
    for name, data in before.items():  # every file is either the old or the new version, whole
        current = (target / name).read_bytes()
        if current != data:
            json.loads(current)


def test_pickle_round_trip(tok):
    texts = CORPUS[:10]
    clone = pickle.loads(pickle.dumps(tok))
    assert _equal(clone(texts, padding=True, return_offsets_mapping=True), tok(texts, padding=True, return_offsets_mapping=True))


# ---------------------------------------------------------------------------------------------------- errors


def test_missing_and_corrupt_model_files(tmp_path):
    missing = tmp_path / "nope" / "spm.model"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        DebertaV2Tokenizer(missing)
    with pytest.raises(FileNotFoundError, match="nope"):
        DebertaV2Tokenizer.from_pretrained(tmp_path / "nope")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="spm.model"):
        DebertaV2Tokenizer.from_pretrained(empty)
    for name, data in (
        ("garbage.model", random.Random(0).randbytes(64) + b"\xff" * 16),
        ("text.model", b"this is not a sentencepiece model\n"),
        ("empty.model", b""),
    ):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ValueError, match=re.escape(str(path))):
            DebertaV2Tokenizer(path)
    bad_json = tmp_path / "bad_json"
    bad_json.mkdir()
    (bad_json / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        DebertaV2Tokenizer.from_pretrained(bad_json)


def test_truncated_model_file(tmp_path, spm_path):
    data = open(spm_path, "rb").read()
    path = tmp_path / "truncated.model"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a valid SentencePiece model"):
        DebertaV2Tokenizer(path)


@pytest.mark.parametrize("bad", [None, 3, b"bytes", ["ok", 5], ("ok", None), [["nested"]]])
def test_non_string_input_is_a_type_error(tok, bad):
    with pytest.raises(TypeError):
        tok(bad)


def test_bad_arguments(tok):
    with pytest.raises(TypeError):
        tok("a", 5)
    with pytest.raises(TypeError):
        tok(["a"], "b")
    with pytest.raises(ValueError, match="items"):
        tok(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="padding"):
        tok("a", padding="sideways")
    with pytest.raises(ValueError, match="truncation"):
        tok("a", truncation="middle", max_length=4)
    with pytest.raises(ValueError, match="stride"):
        tok("a b c d e f", truncation=True, max_length=6, stride=5)
    with pytest.raises(ValueError, match="special tokens"):
        tok("a", "b", truncation=True, max_length=2)
    with pytest.raises(ValueError, match="only_second"):
        tok("a b c d e f g h", truncation="only_second", max_length=4)
    with pytest.raises(ValueError, match="different lengths"):
        tok(["a", "a b c d"], return_tensors="pt")
    with pytest.raises(ValueError, match="return_tensors"):
        tok("a", return_tensors="tf")
    with pytest.raises(IndexError, match="outside"):
        tok.decode([len(tok) + 5])
    with pytest.raises(NotImplementedError):
        tok(["a", "b"], is_split_into_words=True)
    with pytest.raises(ValueError, match="exactly one"):
        DebertaV2Tokenizer()
