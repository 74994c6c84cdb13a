"""Checkpoint faults, simulated: each loads as a named error or as the intact old checkpoint, never
as silently wrong weights (duplicate keys across shards, index entries outside the folder,
integer data for float weights, malformed indexes, flipped bytes, swapped shards, saves that die
half-way)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from hysparse_kernels.models import CheckpointError, build_model, load_pretrained, save_pretrained
from hysparse_kernels.models import files, loading

pytestmark = pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")

SHARD = 200_000


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def model():
    return build_model("tiny-hysparse-7b")


@pytest.fixture
def sharded(tmp_path, model):
    save_pretrained(model, tmp_path / "ckpt", max_shard_bytes=SHARD)
    return tmp_path / "ckpt"


def _index(path):
    return json.loads((path / loading.INDEX).read_text())


def _write_index(path, index):
    (path / loading.INDEX).write_text(json.dumps(index))


def _shards(path):
    return sorted(set(_index(path)["weight_map"].values()))


def test_sharded_save_records_checksums(sharded):
    index = _index(sharded)
    assert set(index["metadata"]["sha256"]) == set(_shards(sharded)) and len(_shards(sharded)) > 2
    for shard, digest in index["metadata"]["sha256"].items():
        tensors, meta = files.read_safetensors(sharded / shard)
        assert meta["sha256"] == digest == files.tensors_sha256(tensors)


def test_a_key_in_two_shards_is_an_error(sharded):
    index = _index(sharded)
    del index["metadata"]["sha256"]  # an index written elsewhere, without checksums
    _write_index(sharded, index)
    first, last = _shards(sharded)[0], _shards(sharded)[-1]
    stolen = next(k for k, f in index["weight_map"].items() if f == first)
    tensors = load_file(str(sharded / last))
    tensors[stolen] = torch.zeros_like(load_file(str(sharded / first))[stolen])
    save_file(tensors, str(sharded / last))
    with pytest.raises(CheckpointError, match=f"tensor {stolen} is in two shards, {first} and {last}"):
        load_pretrained(sharded)


def test_a_shard_holding_a_key_the_index_places_elsewhere_is_an_error(sharded):
    index = _index(sharded)
    del index["metadata"]["sha256"]
    wm = index["weight_map"]
    name = next(k for k, f in wm.items() if f != _shards(sharded)[-1] and list(wm.values()).count(f) > 1)
    wm[name] = _shards(sharded)[-1]  # its own shard is still read (other tensors live there)
    _write_index(sharded, index)
    with pytest.raises(CheckpointError, match=f"holds tensor {name}, but the index lists it in"):
        load_pretrained(sharded)


@pytest.mark.parametrize("entry", ["../x.safetensors", "/etc/x.safetensors", "sub/x.safetensors", ".."])
def test_an_index_entry_outside_the_folder_is_refused(sharded, entry):
    (sharded.parent / "x.safetensors").write_bytes((sharded / _shards(sharded)[0]).read_bytes())
    index = _index(sharded)
    index["weight_map"][next(iter(index["weight_map"]))] = entry
    _write_index(sharded, index)
    with pytest.raises(CheckpointError, match=f"shard '{entry}' is not a file name inside"):
        load_pretrained(sharded)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("[]", 'expected an object with a non-empty "weight_map"'),
    ('{"metadata": {}}', 'expected an object with a non-empty "weight_map"'),
    ('{"weight_map": {"a": 3}}', 'expected an object with a non-empty "weight_map"'),
    ('{"weight_map": {"a": "model-00001-of-00001.safetensors"}, "metadata": {"sha256": [1]}}', "metadata.sha256: expected"),
], ids=["bad-json", "list", "no-weight-map", "non-string-shard", "bad-checksums"])
def test_a_malformed_index_is_a_named_error(sharded, text, message):
    (sharded / loading.INDEX).write_text(text)
    with pytest.raises(CheckpointError, match=f"model.safetensors.index.json: {message}"):
        load_pretrained(sharded)


def test_integer_data_for_a_float_parameter_is_refused(tmp_path, model):
    save_pretrained(model, tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["model.norm.weight"] = torch.ones(64, dtype=torch.int32)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.norm.weight: expected a floating-point tensor, got int32"):
        load_pretrained(tmp_path)


def test_a_flipped_byte_in_the_tensor_data_fails_the_checksum(tmp_path, model):
    save_pretrained(model, tmp_path)
    path = tmp_path / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # the last tensor's data, not the header: the file still parses
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors: tensor data does not match its checksum"):
        load_pretrained(tmp_path)


def test_a_shard_from_another_checkpoint_is_refused(tmp_path, model, sharded):
    other = build_model("tiny-hysparse-7b")
    save_pretrained(other, tmp_path / "other", max_shard_bytes=SHARD)
    victim = _shards(sharded)[1]
    (sharded / victim).write_bytes((tmp_path / "other" / victim).read_bytes())
    with pytest.raises(CheckpointError, match=f"{victim}: not the shard the index was written with"):
        load_pretrained(sharded)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float32])
def test_the_model_takes_the_checkpoint_dtype_bit_exactly(tmp_path, dtype):
    original = build_model("tiny-mimo-v2-flash").to(dtype)
    save_pretrained(original, tmp_path)
    back = load_pretrained(tmp_path)
    assert next(back.parameters()).dtype == dtype and _same(original, back)


def test_a_config_that_cannot_work_names_the_key(tmp_path, model):
    save_pretrained(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["num_attention_heads"] = 0
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.json: not a usable model config .*config.num_attention_heads"):
        load_pretrained(tmp_path)


# --------------------------------------------------------------------------- saves that fail


class Boom(RuntimeError):
    pass


def _fail_on_call(monkeypatch, n):
    """Make the n-th safetensors write of the next save raise."""
    calls, real = [], files.write_safetensors

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise Boom("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(loading, "write_safetensors", flaky)


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "two-renames"])
def test_a_resave_that_fails_half_way_leaves_the_old_checkpoint(tmp_path, model, sharded, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    (sharded / "tokenizer.json").write_text("{}")  # not ours: kept across saves
    newer = build_model("tiny-hysparse-7b")
    _fail_on_call(monkeypatch, 2)
    with pytest.raises(Boom):
        save_pretrained(newer, sharded, max_shard_bytes=SHARD // 2)
    assert _same(model, load_pretrained(sharded))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no hidden leftovers
    monkeypatch.setattr(loading, "write_safetensors", files.write_safetensors)
    save_pretrained(newer, sharded)  # single file now: the shards and index go with the old checkpoint
    assert _same(newer, load_pretrained(sharded))
    assert sorted(p.name for p in sharded.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_leftovers_of_a_killed_save_are_cleaned_up_by_the_next(tmp_path, model, sharded):
    killed = tmp_path / ".ckpt.new-abc123"  # a save killed while writing
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"partial")
    save_pretrained(model, sharded)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_save_killed_between_the_two_renames_is_undone_by_the_next(tmp_path, model, sharded):
    """Without RENAME_EXCHANGE the old folder is moved aside first; killed there, the next save puts it back."""
    aside = tmp_path / ".ckpt.old-deadbeef"
    sharded.rename(aside)
    (aside / "notes.txt").write_text("kept")
    save_pretrained(build_model("tiny-hysparse-7b"), sharded)
    assert (sharded / "notes.txt").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
