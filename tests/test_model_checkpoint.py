"""Loading and saving checkpoint directories: formats, prefixes, legacy names, bad checkpoints, atomic writes."""

import json
import logging
import os
import stat
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import deberta_fast as df
from deberta_fast.checkpoint import CheckpointError

from model_cases import BASE, CONFIGS, make_batch

tf = pytest.importorskip("transformers")

CFG = dict(BASE, **CONFIGS["v3-like"])


@pytest.fixture
def hf_dir(tmp_path):
    torch.manual_seed(0)
    model = tf.DebertaV2ForSequenceClassification(tf.DebertaV2Config(**CFG, num_labels=3)).eval()
    model.save_pretrained(tmp_path / "hf")
    return model, tmp_path / "hf"


def _logits(model, cfg=CFG):
    ids, mask, _ = make_batch(cfg)
    with torch.no_grad():
        return model.eval()(ids, attention_mask=mask)[0]


def test_base_checkpoint_into_head_and_head_into_base(tmp_path, hf_dir, caplog):
    hf_model, path = hf_dir
    hf_model.deberta.save_pretrained(tmp_path / "base")
    with caplog.at_level(logging.WARNING, logger="deberta_fast"):
        head, info = df.DebertaV2ForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=3,
                                                                            output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight", "pooler.dense.bias",
                                            "pooler.dense.weight"]
    assert "newly initialized" in caplog.text and "classifier.weight" in caplog.text
    assert torch.allclose(head.deberta.embeddings.word_embeddings.weight, hf_model.deberta.embeddings.word_embeddings.weight)
    assert head.classifier.weight.std().item() == pytest.approx(0.02, rel=0.5)  # initialized, not garbage

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="deberta_fast"):
        base, info = df.DebertaV2Model.from_pretrained(path, output_loading_info=True)
    assert info["missing_keys"] == []
    assert sorted(info["unexpected_keys"]) == sorted(["classifier.bias", "classifier.weight", "pooler.dense.bias",
                                                      "pooler.dense.weight"])
    assert "were not used" in caplog.text
    torch.testing.assert_close(_logits(base), _logits(hf_model.deberta))


def test_sharded_safetensors(tmp_path, hf_dir):
    hf_model, _ = hf_dir
    hf_model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    ours = df.DebertaV2ForSequenceClassification.from_pretrained(tmp_path / "sharded")
    torch.testing.assert_close(_logits(ours), _logits(hf_model))


def test_pytorch_model_bin_with_legacy_names_and_ignored_keys(tmp_path, hf_dir):
    hf_model, path = hf_dir
    state = hf_model.state_dict()
    # the names old checkpoints use, and keys transformers ignores
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in state.items()}
    renamed["deberta.embeddings.position_embeddings.weight"] = torch.zeros(64, 32)  # v3: position_biased_input off
    renamed["deberta.embeddings.position_ids"] = torch.arange(64)[None]
    target = tmp_path / "bin"
    target.mkdir()
    torch.save(renamed, target / "pytorch_model.bin")
    (target / "config.json").write_text((path / "config.json").read_text())
    ours, info = df.DebertaV2ForSequenceClassification.from_pretrained(target, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    torch.testing.assert_close(_logits(ours), _logits(hf_model))


def test_missing_key_is_reported(tmp_path, hf_dir):
    _, path = hf_dir
    state = load_file(path / "model.safetensors")
    del state["deberta.encoder.layer.1.attention.self.value_proj.weight"]
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    model, info = df.DebertaV2ForSequenceClassification.from_pretrained(path, output_loading_info=True)
    assert info["missing_keys"] == ["deberta.encoder.layer.1.attention.self.value_proj.weight"]
    w = model.deberta.encoder.layer[1].attention.self.value_proj.weight
    assert torch.isfinite(w).all() and 0.01 < w.std().item() < 0.04


def test_wrong_shape_is_an_error_naming_the_key(tmp_path, hf_dir):
    _, path = hf_dir
    with pytest.raises(CheckpointError, match=r"shape mismatch for classifier.bias: .*; classifier.weight: the checkpoint has \(3, 32\), "
                                              r"the model expects \(5, 32\)"):
        df.DebertaV2ForSequenceClassification.from_pretrained(path, num_labels=5)
    model, info = df.DebertaV2ForSequenceClassification.from_pretrained(path, num_labels=5, ignore_mismatched_sizes=True,
                                                                        output_loading_info=True)
    assert [k for k, _, _ in info["mismatched_keys"]] == ["classifier.bias", "classifier.weight"]
    assert model.classifier.weight.shape == (5, 32)


def test_corrupt_safetensors_and_missing_files(tmp_path, hf_dir):
    _, path = hf_dir
    (path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        df.DebertaV2Model.from_pretrained(path)
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights in"):
        df.DebertaV2Model.from_pretrained(path)
    (path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        df.DebertaV2Model.from_pretrained(path)
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        df.DebertaV2Model.from_pretrained(tmp_path / "does" / "not" / "exist")


def test_missing_local_paths_are_named(tmp_path, hf_dir, monkeypatch):
    """A path no hub id can be ("out/", "./out") is looked for locally only, and the error names the directory;
    "~" is expanded; a name that may be a hub id says it is not a local directory either."""
    _, path = hf_dir
    monkeypatch.chdir(tmp_path)
    for name in ("out/", "./out", "out/a/b"):
        with pytest.raises(CheckpointError, match=f"no checkpoint directory at .*{tmp_path / 'out'}"):
            df.DebertaV2Model.from_pretrained(name)
    monkeypatch.setenv("HOME", str(path.parent))
    assert df.DebertaV2Model.from_pretrained(f"~/{path.name}").config.hidden_size == BASE["hidden_size"]
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(CheckpointError, match=f"'out' is not a local directory \\(no {tmp_path / 'out'}\\)"):
        df.DebertaV2Model.from_pretrained("out")


def test_hub_id_without_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(CheckpointError, match="needs the huggingface_hub package"):
        df.DebertaV2Model.from_pretrained("microsoft/deberta-v3-base")


def test_hub_id_offline_gives_a_clear_error(monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="could not fetch 'someone/no-such-model'"):
        df.DebertaV2Model.from_pretrained("someone/no-such-model")


def test_dtype_options(hf_dir):
    _, path = hf_dir
    assert df.DebertaV2Model.from_pretrained(path).dtype == torch.float32
    assert df.DebertaV2Model.from_pretrained(path, torch_dtype=torch.bfloat16).dtype == torch.bfloat16
    assert df.DebertaV2Model.from_pretrained(path, dtype="float16").dtype == torch.float16
    assert df.DebertaV2Model.from_pretrained(path, dtype="auto").dtype == torch.float32  # config.json says float32
    with pytest.raises(ValueError, match="dtype must be a floating"):
        df.DebertaV2Model.from_pretrained(path, dtype=torch.int32)


def test_failed_save_leaves_nothing_half_written(tmp_path, hf_dir, monkeypatch):
    _, path = hf_dir
    model = df.DebertaV2Model.from_pretrained(path)
    out = tmp_path / "out"
    import safetensors.torch

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(out)
    assert list(out.iterdir()) == []
    monkeypatch.undo()
    model.save_pretrained(out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    saved = json.loads((out / "config.json").read_text())
    assert saved["architectures"] == ["DebertaV2Model"] and "attn_backend" not in saved


def test_save_writes_both_files_or_neither(tmp_path, hf_dir, monkeypatch):
    """A failure while writing config.json leaves the earlier save's weights too: the two files are renamed
    into place once both are whole, and no temporary file is left."""
    _, path = hf_dir
    model = df.DebertaV2Model.from_pretrained(path)
    out = tmp_path / "out"
    model.save_pretrained(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    def broken(self):
        raise OSError("disk full")

    monkeypatch.setattr(df.DebertaV2Config, "to_json_string", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_save_removes_the_weight_files_it_does_not_replace(tmp_path, hf_dir, caplog):
    """A pytorch_model.bin saved where a model.safetensors (or a sharded safetensors checkpoint) was would be
    shadowed by it (loaders prefer safetensors): the save removes them, with a warning, and the files of a
    safetensors save replace an earlier .bin save's likewise. Other files stay."""
    _, path = hf_dir
    model = df.DebertaV2Model.from_pretrained(path)
    out = tmp_path / "out"
    model.save_pretrained(out)
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": dict(zip("ab", shards))}))
    for name in [*shards, "notes.txt"]:
        (out / name).write_bytes(b"x")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    with caplog.at_level(logging.WARNING, logger="deberta_fast"):
        model.save_pretrained(out, safe_serialization=False)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "notes.txt", "pytorch_model.bin"]
    assert "model.safetensors" in caplog.text and "model-00002-of-00002.safetensors" in caplog.text
    back = df.DebertaV2Model.from_pretrained(out)
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    model.save_pretrained(out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "notes.txt"]


@pytest.mark.skipif(not hasattr(os, "umask") or sys.platform == "win32", reason="POSIX file modes")
def test_saved_files_get_the_modes_of_plain_files(tmp_path, hf_dir):
    """Files written through a temporary file get a new file's mode under the umask (not the temporary file's
    owner-only 0600), or the mode of the file they replace."""
    _, path = hf_dir
    model = df.DebertaV2Model.from_pretrained(path)
    old = os.umask(0o022)
    try:
        model.save_pretrained(tmp_path / "a")
        os.umask(0o027)
        model.save_pretrained(tmp_path / "b")
        os.chmod(tmp_path / "b" / "config.json", 0o600)
        model.save_pretrained(tmp_path / "b")
    finally:
        os.umask(old)
    modes = {f"{d}/{p.name}": stat.S_IMODE(p.stat().st_mode) for d in "ab" for p in (tmp_path / d).iterdir()}
    assert modes == {"a/config.json": 0o644, "a/model.safetensors": 0o644,
                     "b/config.json": 0o600, "b/model.safetensors": 0o640}


def test_pytorch_model_bin_save_round_trip(tmp_path, hf_dir):
    hf_model, path = hf_dir
    model = df.DebertaV2ForSequenceClassification.from_pretrained(path)
    model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "pytorch_model.bin").exists()
    back = tf.DebertaV2ForSequenceClassification.from_pretrained(tmp_path / "bin")
    torch.testing.assert_close(_logits(back), _logits(hf_model))
