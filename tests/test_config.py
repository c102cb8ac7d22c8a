import json
import logging

import pytest

from deberta_fast import DebertaV2Config

tf = pytest.importorskip("transformers")


def test_reads_transformers_config_json_and_keeps_unknown_keys(tmp_path):
    hf = tf.DebertaV2Config(hidden_size=64, num_attention_heads=4, relative_attention=True, pos_att_type="p2c|c2p",
                            position_buckets=256, max_relative_positions=512, share_att_key=True,
                            norm_rel_ebd="layer_norm", num_labels=5, problem_type="multi_label_classification")
    hf.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["some_future_field"] = {"nested": [1, 2]}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    cfg = DebertaV2Config.from_pretrained(tmp_path)
    assert cfg.pos_att_type == ["p2c", "c2p"] and cfg.position_buckets == 256 and cfg.share_att_key is True
    assert cfg.num_labels == 5 and cfg.id2label[4] == "LABEL_4" and cfg.problem_type == "multi_label_classification"
    assert cfg.some_future_field == {"nested": [1, 2]}
    assert cfg.attention_span == 256 and cfg.head_size == 16 and cfg.pooler_hidden_size == 64

    cfg.save_pretrained(tmp_path / "ours")
    written = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert written["some_future_field"] == {"nested": [1, 2]}
    for key, value in raw.items():
        if key not in ("transformers_version",):
            assert written[key] == value, key
    back = tf.DebertaV2Config.from_pretrained(tmp_path / "ours")
    assert back.num_labels == 5 and back.pos_att_type == ["p2c", "c2p"] and back.position_buckets == 256


def test_defaults_follow_transformers():
    ours, hf = DebertaV2Config(), tf.DebertaV2Config()
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                "type_vocab_size", "initializer_range", "layer_norm_eps", "relative_attention",
                "max_relative_positions", "pad_token_id", "position_biased_input", "pooler_dropout",
                "pooler_hidden_act", "legacy", "tie_word_embeddings", "num_labels"):
        assert getattr(ours, key) == getattr(hf, key), key
    assert ours.pos_att_type == [] and ours.resolved_max_relative_positions == 512


def test_num_labels_and_string_pos_att_type():
    cfg = DebertaV2Config(num_labels=4, pos_att_type="C2P | p2c")
    assert cfg.pos_att_type == ["c2p", "p2c"] and list(cfg.label2id) == ["LABEL_0", "LABEL_1", "LABEL_2", "LABEL_3"]
    cfg.num_labels = 2
    assert cfg.id2label == {0: "LABEL_0", 1: "LABEL_1"}


@pytest.mark.parametrize(
    "value,want",
    [("C2P | p2c", ["c2p", "p2c"]), ("p2c|c2p", ["p2c", "c2p"]), ("none", ["none"]), ("", [""]), (None, []),
     (["C2P", "p2c"], ["C2P", "p2c"]), (["c2p "], ["c2p "]), ("c2p|p2c|p2p", ["c2p", "p2c", "p2p"])],
)
def test_pos_att_type_is_read_as_transformers_reads_it(value, want, caplog):
    """A string lower-cased, split and stripped, a list's entries unchanged; transformers' models match the
    entries exactly and ignore others, so do ours (tests/test_model_parity.py), with a warning naming them."""
    hf = tf.DebertaV2Config(pos_att_type=value)
    with caplog.at_level(logging.WARNING, logger="deberta_fast"):
        cfg = DebertaV2Config(pos_att_type=value)
    assert cfg.pos_att_type == want == (hf.pos_att_type or [])
    ignored = [t for t in want if t not in ("c2p", "p2c", "", "none")]
    assert ("ignores" in caplog.text) == bool(ignored) and all(repr(t) in caplog.text for t in ignored)


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(hidden_size=30, num_attention_heads=4), "not a multiple of num_attention_heads"),
     (dict(problem_type="ranking"), "problem_type must be one of"),
     (dict(problem_type="single_label_classification", num_labels=1), "needs num_labels > 1"),
     (dict(masked_rows="none"), "masked_rows must be"),
     (dict(num_labels=0), "num_labels must be a positive int")],
)
def test_invalid_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DebertaV2Config(**kwargs)


def test_bad_files(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        DebertaV2Config.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert'"):
        DebertaV2Config.from_pretrained(tmp_path)
