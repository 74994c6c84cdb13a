"""The untuned-config warning: one line per process and device, whichever ops run untuned."""

import warnings

import pytest

from hysparse_kernels import tuned

ATT = {"batch": 1, "q_heads": 8, "kv_heads": 2, "qk_dim": 64, "v_dim": 64, "seq_q": 512, "seq_k": 512}
MOE = {"tokens": 64, "hidden": 64, "experts": 8, "top_k": 2, "intermediate": 32}


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(tuned.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setattr(tuned.cache, "SHIPPED", tmp_path / "shipped")  # nothing shipped either
    tuned.invalidate()
    tuned.reset_warnings()
    yield
    tuned.invalidate()
    tuned.reset_warnings()


def _launch_all():
    seen = []
    for op, shape, backend in (("attention_fwd", ATT, "tvm"), ("attention_decode", {**ATT, "seq_q": 1}, "tvm"),
                               ("moe_fwd", MOE, "tvm"), ("attention_fwd", ATT, "triton")):
        tuned.launch(op, backend=backend, shape=shape, heuristic={"rows": 48}, run=seen.append)
    return seen


def test_untuned_ops_warn_once_in_one_line():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seen = _launch_all()
        _launch_all()
    assert seen == [{"rows": 48}] * 4  # every op ran its heuristic
    msgs = [str(w.message) for w in caught if issubclass(w.category, tuned.TunedConfigWarning)]
    assert len(msgs) == 1, msgs
    assert "no tuned config for attention_fwd" in msgs[0] and "once per process" in msgs[0]
    assert "\n" not in msgs[0] and "hysparse autotune" in msgs[0]


def test_the_device_key_comes_from_one_read_of_cpuinfo(monkeypatch):
    """The key names the folder of a machine's configs: its format must not change (an existing
    cache would be orphaned), and ``hysparse info`` names the CPU from the same read."""
    from hysparse_kernels import info

    lines = ("processor\t: 0", "model\t\t: 1", "model name\t: AMD EPYC 7B13 64-Core Processor",
             "flags\t\t: fpu sse4_2 avx avx2 fma", "processor\t: 1", "model name\t: another")
    monkeypatch.setattr(tuned.device, "cpuinfo", lambda: lines)
    monkeypatch.setattr(tuned.device.os, "cpu_count", lambda: 2)
    tuned.device_description.cache_clear()
    try:
        assert tuned.device_key("cpu") == "cpu-amd-epyc-7b13-64-core-processor-avx2-2c"
        assert tuned.cpu_isa() == "avx2"
        assert info.device_description().startswith("cpu: AMD EPYC 7B13 64-Core Processor, ")
    finally:
        tuned.device_description.cache_clear()


def _hash_of(*paths):
    """sha256 of each file's name and bytes (a folder: its ``*.py`` by name), 16 hex digits: the
    source key of every tuned-config file written so far."""
    import hashlib

    h = hashlib.sha256()
    for path in paths:
        for f in sorted(path.glob("*.py")) if path.is_dir() else [path]:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def test_each_family_keys_its_configs_by_its_own_kernel_sources():
    import pathlib

    import hysparse_kernels

    ops = pathlib.Path(hysparse_kernels.__file__).parent / "ops"
    assert tuned.source_hash("attention_fwd", "tvm") == _hash_of(ops / "attention" / "tvm")
    assert tuned.source_hash("attention_decode", "triton") == _hash_of(ops / "attention" / "triton")
    assert tuned.source_hash("moe_fwd", "tvm") == _hash_of(ops / "moe" / "tvm")
    assert tuned.source_hash("moe_fwd", "triton") == _hash_of(ops / "moe" / "triton")
    assert (tuned.op_family("route"), tuned.op_family("topk_blocks"), tuned.op_family("nope")) == ("moe", "attention", None)


def test_a_registered_family_is_keyed_by_its_files(tmp_path):
    kernel = tmp_path / "kernel.py"
    kernel.write_text("X = 1\n")
    tuned.register_sources("toy", ["toy_fwd"], {"tvm": [kernel]})
    before = tuned.source_hash("toy_fwd", "tvm")
    assert before == _hash_of(kernel) and tuned.source_hash("toy_fwd", "triton") == _hash_of()
    kernel.write_text("X = 2\n")
    tuned.register_sources("toy", ["toy_fwd"], {"tvm": [kernel]})  # registering again forgets the old hash
    assert tuned.source_hash("toy_fwd", "tvm") != before
