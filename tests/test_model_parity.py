"""Parity with transformers for every model class on a grid of tiny configs.

transformers writes a checkpoint with save_pretrained; deberta_fast loads it and must give the same
outputs (every position, hidden states, attentions) and the same gradient for every parameter; then
what deberta_fast saves must load back into transformers with no missing or unexpected keys.
"""

import pytest
import torch

import deberta_fast as df

from model_cases import B, BASE, CONFIGS, N, make_batch

tf = pytest.importorskip("transformers")

HEADS = [
    "DebertaV2Model", "DebertaV2ForMaskedLM", "DebertaV2ForSequenceClassification",
    "DebertaV2ForTokenClassification", "DebertaV2ForQuestionAnswering", "DebertaV2ForMultipleChoice",
]


def _labels(head: str, cfg: dict, g: torch.Generator):
    if head == "DebertaV2ForMaskedLM":
        labels = torch.randint(0, cfg["vocab_size"], (B, N), generator=g)
        labels[:, ::3] = -100
        return {"labels": labels}
    if head == "DebertaV2ForSequenceClassification":
        return {"labels": torch.tensor([0, 2, -1])}  # the -1 row is ignored by the loss
    if head == "DebertaV2ForTokenClassification":
        labels = torch.randint(0, 3, (B, N), generator=g)
        labels[0, -7:] = -100
        return {"labels": labels}
    if head == "DebertaV2ForQuestionAnswering":
        return {"start_positions": torch.tensor([1, 7, N + 5]), "end_positions": torch.tensor([4, 9, 2])}
    if head == "DebertaV2ForMultipleChoice":
        return {"labels": torch.tensor([0, 1, 1])}
    return {}


def _loss(head: str, out, g: torch.Generator):
    if head == "DebertaV2Model":
        w = torch.randn(out.last_hidden_state.shape, generator=g)
        return (out.last_hidden_state * w).sum()
    return out.loss


def assert_rel_close(got, want, what, rtol=1e-5, atol=1e-6):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got.double() - want.double()).abs().max().item()
    bound = rtol * want.double().abs().max().item() + atol
    assert err <= bound, f"{what}: max error {err:.3e} > {bound:.3e}"


def _build_pair(name: str, head: str, tmp_path):
    cfg = dict(BASE, **CONFIGS[name])
    extra = {"num_labels": 3} if head in ("DebertaV2ForSequenceClassification", "DebertaV2ForTokenClassification") else {}
    torch.manual_seed(0)
    ref = getattr(tf, head)(tf.DebertaV2Config(**cfg, **extra))
    ref.save_pretrained(tmp_path / "hf")
    ours = getattr(df, head).from_pretrained(tmp_path / "hf", attn_backend="torch")
    return cfg, ref, ours


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_outputs_and_parameter_gradients_match_transformers(name, head, tmp_path):
    cfg, ref, ours = _build_pair(name, head, tmp_path)
    ids, mask, types = make_batch(cfg, num_choices=2 if head == "DebertaV2ForMultipleChoice" else None)
    g = torch.Generator().manual_seed(1)
    labels = _labels(head, cfg, g)
    inputs = dict(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True, **labels)
    ref.train()
    ours.train()  # dropout probabilities are 0: train-mode code paths, deterministic values
    want = ref(**inputs)
    got = ours(**inputs)
    for key in want.keys():
        w, o = want[key], got[key]
        if isinstance(w, tuple):
            assert len(o) == len(w), key
            for i, (a, b) in enumerate(zip(o, w)):
                assert_rel_close(a, b, f"{key}[{i}]")
        else:
            assert_rel_close(o, w, key)
    assert set(got.keys()) == set(want.keys())

    loss_ref = _loss(head, want, torch.Generator().manual_seed(2))
    loss_ours = _loss(head, got, torch.Generator().manual_seed(2))
    loss_ref.backward()
    loss_ours.backward()
    ref_params = dict(ref.named_parameters())
    ours_params = dict(ours.named_parameters())
    assert set(ours_params) == set(ref_params)
    for key, p in ours_params.items():
        q = ref_params[key]
        if q.grad is None:
            assert p.grad is None or torch.count_nonzero(p.grad) == 0, key
            continue
        assert p.grad is not None, f"{key}: no gradient"
        assert_rel_close(p.grad, q.grad, f"grad {key}", rtol=2e-5)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("name", ["v3-like", "nGiE-conv", "embed-proj-types"])
def test_saved_checkpoint_loads_into_transformers(name, head, tmp_path):
    cfg, ref, ours = _build_pair(name, head, tmp_path)
    # change every parameter so the round trip cannot pass by re-reading the original files
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ours.save_pretrained(tmp_path / "ours")
    back, info = getattr(tf, head).from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ids, mask, types = make_batch(cfg, num_choices=2 if head == "DebertaV2ForMultipleChoice" else None)
    ours.eval()
    back.eval()
    with torch.no_grad():
        a = ours(input_ids=ids, attention_mask=mask, token_type_ids=types, return_dict=False)
        b = back(input_ids=ids, attention_mask=mask, token_type_ids=types, return_dict=False)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert_rel_close(x, y, "round trip")


@pytest.mark.parametrize("name", ["v3-like", "buckets-clamp"])
def test_attentions_and_tuple_outputs_match(name, tmp_path):
    cfg, ref, ours = _build_pair(name, "DebertaV2Model", tmp_path)
    ids, mask, types = make_batch(cfg)
    with torch.no_grad():
        want = ref(ids, attention_mask=mask, output_attentions=True, output_hidden_states=True, return_dict=False)
        got = ours(ids, attention_mask=mask, output_attentions=True, output_hidden_states=True, return_dict=False)
    assert len(got) == len(want) == 3
    for a, b in zip(got[2], want[2]):
        assert_rel_close(a, b, "attentions")


def test_legacy_false_and_untied_masked_lm(tmp_path):
    for extra in (dict(legacy=False), dict(tie_word_embeddings=False)):
        cfg = dict(BASE, **CONFIGS["v3-like"], **extra)
        torch.manual_seed(0)
        ref = tf.DebertaV2ForMaskedLM(tf.DebertaV2Config(**cfg))
        path = tmp_path / str(sorted(extra))
        ref.save_pretrained(path)
        ours, info = df.DebertaV2ForMaskedLM.from_pretrained(path, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        ids, mask, _ = make_batch(cfg)
        with torch.no_grad():
            assert_rel_close(ours(ids, attention_mask=mask).logits, ref.eval()(ids, attention_mask=mask).logits, str(extra))
        ours.save_pretrained(tmp_path / "ours")
        _, back_info = tf.DebertaV2ForMaskedLM.from_pretrained(tmp_path / "ours", output_loading_info=True)
        assert not back_info["missing_keys"] and not back_info["unexpected_keys"], back_info


@pytest.mark.parametrize(
    "num_labels,problem_type,labels",
    [(1, None, torch.tensor([0.5, -1.0, 2.0])),
     (3, None, torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])),  # soft labels
     (3, None, torch.tensor([-1, -1, -1])),  # every row ignored
     (3, "single_label_classification", torch.tensor([2, 0, 1])),
     (3, "multi_label_classification", torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0]])),
     (1, "regression", torch.tensor([0.1, 0.2, 0.3])),
     (2, "regression", torch.tensor([[0.1, 0.2], [0.2, 0.3], [0.3, 0.4]]))],
)
def test_sequence_classification_loss_branches(num_labels, problem_type, labels, tmp_path):
    cfg = dict(BASE, **CONFIGS["v3-like"])
    torch.manual_seed(0)
    ref = tf.DebertaV2ForSequenceClassification(
        tf.DebertaV2Config(**cfg, num_labels=num_labels, problem_type=problem_type)
    ).eval()
    ref.save_pretrained(tmp_path)
    ours = df.DebertaV2ForSequenceClassification.from_pretrained(tmp_path)
    assert ours.config.problem_type == problem_type and ours.config.num_labels == num_labels
    ids, mask, _ = make_batch(cfg)
    want = ref(ids, attention_mask=mask, labels=labels)
    got = ours(ids, attention_mask=mask, labels=labels)
    assert_rel_close(got.logits, want.logits, "logits")
    assert_rel_close(got.loss, want.loss, "loss")


# Settings transformers takes that the grid above does not hold, in float64 (outputs equal to rounding: the
# attention scale's square root is taken in float32 by both). pos_att_type as transformers reads it: list entries
# exactly ("C2P" names no term), other entries ignored; log-bucket settings undefined beyond buckets // 2 on
# sequences that never reach it (N = 24 here) or with no position term to read them; transformers' activations.
EDGE_CONFIGS = {
    "list-upper-case": dict(pos_att_type=["C2P", "p2c"]),
    "list-upper-case-shared": dict(pos_att_type=["C2P", "p2c"], share_att_key=True),
    "list-padded-entry": dict(pos_att_type=["c2p "]),
    "string-none": dict(pos_att_type="none"),
    "string-empty": dict(pos_att_type=""),
    "unknown-entry": dict(pos_att_type="c2p|p2c|p2p"),
    "buckets-beyond-positions": dict(position_buckets=256, max_position_embeddings=32, share_att_key=True),
    "degenerate-buckets-unread": dict(relative_attention=False, position_buckets=8, max_relative_positions=5),
    "degenerate-buckets-no-term": dict(pos_att_type=None, position_buckets=8, max_relative_positions=4),
    "buckets-one-unread": dict(relative_attention=False, position_buckets=1),
    "act-gelu_10": dict(hidden_act="gelu_10", conv_kernel_size=3, conv_act="laplace"),
    "act-gelu_accurate": dict(hidden_act="gelu_accurate", conv_kernel_size=3, conv_act="sqrtsoftplus"),
    "act-relu2": dict(hidden_act="relu2", conv_kernel_size=3, conv_act="hardswish"),
    "act-gelu_python_tanh": dict(hidden_act="gelu_python_tanh", conv_kernel_size=1, conv_act="gelu_python"),
}


def _build_pair64(cfg: dict, head: str, tmp_path):
    torch.manual_seed(0)
    ref = getattr(tf, head)(tf.DebertaV2Config(**cfg)).double().eval()
    ref.save_pretrained(tmp_path / "hf")
    ours = getattr(df, head).from_pretrained(tmp_path / "hf", attn_backend="torch", dtype=torch.float64).eval()
    return ref, ours


@pytest.mark.parametrize("name", list(EDGE_CONFIGS))
def test_edge_configs_match_transformers_in_float64(name, tmp_path):
    cfg = dict(BASE, **EDGE_CONFIGS[name])
    ref, ours = _build_pair64(cfg, "DebertaV2ForSequenceClassification", tmp_path)
    assert {k for k, _ in ours.named_parameters()} == {k for k, _ in ref.named_parameters()}
    ids, mask, types = make_batch(cfg)
    with torch.no_grad():
        want = ref(ids, attention_mask=mask, output_hidden_states=True)
        got = ours(ids, attention_mask=mask, output_hidden_states=True)
    for i, (a, b) in enumerate(zip(got.hidden_states, want.hidden_states)):
        assert_rel_close(a, b, f"hidden_states[{i}]", rtol=1e-12, atol=1e-12)
    assert_rel_close(got.logits, want.logits, "logits", rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("value", [2, 0.5])
def test_conv_layer_reads_mask_values_as_transformers(value, tmp_path):
    """transformers' conv layer zeroes its output wherever the mask is not 1 (and scales by the mask after its
    LayerNorm); the attention reads any nonzero value as a token. A mask with other values gets the same."""
    cfg = dict(BASE, **CONFIGS["nGiE-conv"])
    ref, ours = _build_pair64(cfg, "DebertaV2Model", tmp_path)
    ids, mask, _ = make_batch(cfg)
    mask = mask.to(torch.float64 if isinstance(value, float) else torch.long)
    mask[2, 3:9] = value
    with torch.no_grad():
        want = ref(ids, attention_mask=mask).last_hidden_state
        got = ours(ids, attention_mask=mask).last_hidden_state
        ones = ours(ids, attention_mask=(mask != 0).long()).last_hidden_state
    assert_rel_close(got, want, "last_hidden_state", rtol=1e-12, atol=1e-12)
    assert not torch.allclose(got[2], ones[2])  # the value matters (not read as a plain 0/1 mask)
