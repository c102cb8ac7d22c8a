"""Model behaviour beyond parity: input checks, backends, masked rows, dropout, checkpointing, compile."""

import pytest
import torch

import deberta_fast as df

from model_cases import BASE, CONFIGS, make_batch

CFG = dict(BASE, **CONFIGS["v3-like"])


def _model(cls=df.DebertaV2Model, **over):
    torch.manual_seed(0)
    return cls(df.DebertaV2Config(**{**CFG, **over}))


def test_input_errors():
    model = _model()
    ids, mask, _ = make_batch(CFG)
    with pytest.raises(ValueError, match="either input_ids or inputs_embeds"):
        model()
    with pytest.raises(ValueError, match="both input_ids and inputs_embeds"):
        model(ids, inputs_embeds=torch.randn(3, 24, 32))
    with pytest.raises(ValueError, match=r"\[B, N\] = \(3, 24\) padding mask.*does not take \[B, N, N\] or 4-D"):
        model(ids, attention_mask=mask[:, None, None, :])
    with pytest.raises(ValueError, match=r"padding mask \(1 = token, 0 = padding\), got \(3, 23\)$"):
        model(ids, attention_mask=mask[:, :-1])  # a wrong length: no word of extended masks
    with pytest.raises(ValueError, match="attention_mask has negative entries, as an additive mask"):
        model(ids, attention_mask=(mask.float() - 1) * 1e4)
    with pytest.raises(ValueError, match=r"input_ids must be \[B, N\]"):
        model(ids[0])
    with pytest.raises(TypeError, match="input_ids must be a torch.Tensor, got list"):
        model(ids.tolist())
    absolute = _model(position_biased_input=True)
    with pytest.raises(ValueError, match="exceeds max_position_embeddings 64"):
        absolute(torch.ones(1, 65, dtype=torch.long))
    with pytest.raises(TypeError, match="config must be a DebertaV2Config"):
        df.DebertaV2Model({"hidden_size": 32})


def test_accepts_a_transformers_config():
    tf = pytest.importorskip("transformers")
    model = df.DebertaV2Model(tf.DebertaV2Config(**CFG))
    assert isinstance(model.config, df.DebertaV2Config) and model.config.position_buckets == 8


def test_inputs_embeds_equals_input_ids():
    model = _model().eval()
    ids, mask, _ = make_batch(CFG)
    a = model(ids, attention_mask=mask).last_hidden_state
    b = model(inputs_embeds=model.embeddings.word_embeddings(ids), attention_mask=mask).last_hidden_state
    torch.testing.assert_close(a, b)


def test_output_attentions_needs_the_torch_backend():
    model = _model(attn_backend="triton")
    ids, mask, _ = make_batch(CFG)
    with pytest.raises(ValueError, match="output_attentions=True needs the torch backend"):
        model(ids, attention_mask=mask, output_attentions=True)
    model.set_attn_backend("torch")
    out = model(ids, attention_mask=mask, output_attentions=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (3, 4, 24, 24)


class _Refuser:
    name = "refuser"

    def availability_reasons(self):
        return ["it never runs"]

    def not_supported_reasons(self, call):
        return ["it never runs"]

    def forward(self, call):  # pragma: no cover - never selected
        raise AssertionError("selected despite its reasons")


def test_unusable_backend_is_an_error_not_a_fallback(monkeypatch):
    from deberta_fast import backends

    monkeypatch.setitem(backends._REGISTRY, "refuser", _Refuser())
    model = _model(attn_backend="refuser")
    ids, mask, _ = make_batch(CFG)
    with pytest.raises(ValueError, match="backend 'refuser' cannot serve this call: it never runs"):
        model(ids, attention_mask=mask)
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        _model(attn_backend="nope")
    config = df.DebertaV2Config(**CFG)
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        df.DebertaV2Model(config, attn_backend="nope")
    assert config.attn_backend == "auto"  # the caller's config is left as it was
    df.DebertaV2Model(config)  # and still builds a model


def test_backend_variable_overrides_auto_only(monkeypatch):
    """DEBERTA_FAST_BACKEND stands in for "auto": a model with an explicit backend ignores it (even a bad value),
    one on "auto" is refused with the variable named; a non-string backend is a ValueError either way."""
    monkeypatch.setenv("DEBERTA_FAST_BACKEND", "nope")
    ids, mask, _ = make_batch(CFG)
    model = _model(attn_backend="torch")
    model(ids, attention_mask=mask)
    with pytest.raises(ValueError, match="DEBERTA_FAST_BACKEND='nope' names no backend"):
        model.set_attn_backend("auto")
    assert model.config.attn_backend == "torch"
    with pytest.raises(ValueError, match="DEBERTA_FAST_BACKEND='nope' names no backend"):
        _model()
    for value in ("nope", "torch"):
        monkeypatch.setenv("DEBERTA_FAST_BACKEND", value)
        with pytest.raises(ValueError, match="backend must be a string"):
            model.set_attn_backend(None)


def test_masked_rows_zero_changes_only_padding_rows(monkeypatch):
    """config.masked_rows reaches every layer's attention: the padding rows change, the real tokens' do not."""
    ids, mask, _ = make_batch(CFG)
    mask[2] = 0  # one sequence entirely padding
    seen = []
    attention = df.modeling.disentangled_attention

    def spy(*args, **kwargs):
        seen.append(kwargs["masked_rows"])
        return attention(*args, **kwargs)

    monkeypatch.setattr(df.modeling, "disentangled_attention", spy)
    uniform = _model().eval()(ids, attention_mask=mask).last_hidden_state
    zero = _model(masked_rows="zero").eval()(ids, attention_mask=mask).last_hidden_state
    layers = CFG["num_hidden_layers"]
    assert seen == ["uniform"] * layers + ["zero"] * layers
    real = mask.bool()
    torch.testing.assert_close(zero[real], uniform[real], rtol=0, atol=0)
    assert (zero[~real] - uniform[~real]).abs().max() > 1e-3


def test_dropout_is_active_in_train_mode_only():
    model = _model(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    ids, mask, _ = make_batch(CFG)
    model.eval()
    a, b = model(ids, attention_mask=mask)[0], model(ids, attention_mask=mask)[0]
    assert torch.equal(a, b)
    model.train()
    c = model(ids, attention_mask=mask)[0]
    assert not torch.allclose(a, c)


def test_gradient_checkpointing_gives_the_same_gradients():
    """With checkpointing on, every layer's forward runs again in the backward (twice a step, once without), and
    the gradients are the same."""
    ids, mask, _ = make_batch(CFG)
    grads = []
    for enable in (False, True):
        model = _model(df.DebertaV2ForMaskedLM).train()
        if enable:
            model.gradient_checkpointing_enable()
        calls = []
        for layer in model.deberta.encoder.layer:
            layer.register_forward_pre_hook(lambda module, args: calls.append(module))  # (the recompute stops early)
        model(ids, attention_mask=mask, labels=ids).loss.backward()
        assert len(calls) == CFG["num_hidden_layers"] * (2 if enable else 1)
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], msg=k)


def test_low_precision_model_runs_on_cpu():
    ids, mask, _ = make_batch(CFG)
    ref = _model().eval()(ids, attention_mask=mask).last_hidden_state
    low = _model().to(torch.bfloat16).eval()(ids, attention_mask=mask).last_hidden_state
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max().item() < 0.1


def _usable_backends():
    probe = df.backends.call.make_call(*[torch.zeros(1, 1, 2, 8)] * 3, position_buckets=4, max_relative_positions=8)
    return [name for name, reasons in df.available_backends(probe).items() if not reasons]


@pytest.mark.parametrize("backend", _usable_backends())
def test_torch_compile_fullgraph_no_graph_breaks(backend):
    """The whole model, forward and backward, traced as one graph (the triton backend runs under the
    interpreter on CPU CI). aot_eager keeps CI fast; inductor adds nothing to the graph-break check."""
    model = _model(df.DebertaV2ForMaskedLM, attn_backend=backend).train()
    ids, mask, _ = make_batch(CFG)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(ids, attention_mask=mask, labels=ids)
    out.loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ref = model(ids, attention_mask=mask, labels=ids)
    ref.loss.backward()
    torch.testing.assert_close(out.logits, ref.logits)
    for k, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[k], p.grad, msg=k)


def test_auto_skips_backends_not_marked_for_auto_selection(monkeypatch):
    from deberta_fast import backends
    from deberta_fast.backends.call import make_call

    class Eager:
        name, auto_select = "eager", False

        def not_supported_reasons(self, call):
            return []

        def forward(self, call):
            return call.query

    monkeypatch.setitem(backends._REGISTRY, "eager", Eager())
    monkeypatch.setattr(backends, "_CUDA_ORDER", ("eager", "torch"))
    call = make_call(*[torch.randn(1, 2, 3, 4, device="meta")] * 3, position_buckets=4, max_relative_positions=8)
    # meta tensors are not CUDA tensors: pretend they are by using the CUDA preference order
    monkeypatch.setattr(backends, "_auto_order", lambda call: backends._CUDA_ORDER)
    assert backends.select_backend(call, "auto").name == "torch"
    assert backends.select_backend(call, "eager").name == "eager"


@pytest.mark.parametrize("cls", [df.DebertaV2Model, df.DebertaV2ForMaskedLM, df.DebertaV2ForTokenClassification,
                                 df.DebertaV2ForSequenceClassification, df.DebertaV2ForQuestionAnswering])
def test_config_return_dict_false_gives_tuples(cls):
    ids, mask, _ = make_batch(CFG)
    model = _model(cls).eval()
    with torch.no_grad():
        as_dict = model(ids, attention_mask=mask)
        model.config.return_dict = False
        as_tuple = model(ids, attention_mask=mask)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.to_tuple())
    for a, b in zip(as_tuple, as_dict.to_tuple()):
        torch.testing.assert_close(a, b)


def test_eval_position_tables_are_cached_until_a_parameter_changes():
    ids, mask, _ = make_batch(CFG)
    model = _model(df.DebertaV2ForMaskedLM).eval()
    with torch.no_grad():
        first = model(ids, attention_mask=mask).logits
        tables = model.deberta.encoder._cached_tables[1]
        again = model(ids, attention_mask=mask).logits
        assert model.deberta.encoder._cached_tables[1] is tables  # reused, not recomputed
        torch.testing.assert_close(again, first, rtol=0, atol=0)
        # every parameter the tables depend on invalidates them: in-place updates, writes through .data
        # (which bypass the version counter, as EMA code does; a swap of two rows keeps the sum too) and
        # load_state_dict
        span = model.config.attention_span

        def swap_rows(w):  # the rows of distances 0 and 1
            w.data[[span, span + 1]] = w.data[[span + 1, span]].clone()

        for module, update in ((model.deberta.encoder.rel_embeddings, lambda w: w.add_(0.05)),
                               (model.deberta.encoder.LayerNorm, lambda w: w.data.mul_(0.9)),
                               (model.deberta.encoder.layer[1].attention.self.key_proj, lambda w: w.data.add_(0.05)),
                               (model.deberta.encoder.rel_embeddings, swap_rows)):
            update(module.weight)
            changed = model(ids, attention_mask=mask).logits
            fresh = _model(df.DebertaV2ForMaskedLM).eval()
            fresh.load_state_dict(model.state_dict())
            torch.testing.assert_close(changed, fresh(ids, attention_mask=mask).logits)
            assert not torch.allclose(changed, first)
    # with autograd or in training the tables are always recomputed from the parameters
    model.train()
    model(ids, attention_mask=mask).logits.sum().backward()
    assert model.deberta.encoder.rel_embeddings.weight.grad is not None
    assert model.deberta.encoder._cached_tables is None
