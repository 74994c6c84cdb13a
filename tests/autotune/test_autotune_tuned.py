"""The lookup API of the kernel layer: buckets, file checks, shipped defaults, lock, blacklist."""

import json
import threading

import pytest

from hysparse_kernels import tuned

ATT = {"batch": 1, "q_heads": 8, "kv_heads": 2, "qk_dim": 64, "v_dim": 64, "seq_q": 4096, "seq_k": 4096}


def att(**kw):
    return {**ATT, **kw}


def store(cfg, **shape):
    return tuned.store("attention_fwd", backend="tvm", shape=att(**shape), config=cfg, time_ms=1.0, heuristic_ms=2.0)


def look(**shape):
    return tuned.lookup("attention_fwd", backend="tvm", device="cpu", shape=att(**shape))


def test_store_writes_versioned_file(cache):
    path = store({"rows": 32, "kv_tile": 64})
    assert path == cache / tuned.device_key("cpu") / "attention_fwd.json"
    data = json.loads(path.read_text())
    assert data["format"] == tuned.FORMAT and data["device"]["key"] == tuned.device_key("cpu")
    assert data["device"]["name"] and data["date"] and set(data["versions"]) == {"torch", "triton", "tvm"}
    part = data["backends"]["tvm"]
    assert part["source_hash"] == tuned.source_hash("attention_fwd", "tvm")
    assert part["versions"]["tvm"] == tuned.versions()["tvm"]
    (entry,) = part["entries"].values()
    assert entry["config"] == {"rows": 32, "kv_tile": 64} and entry["bucket"] == {"seq_q": 4096, "seq_k": 4096}
    assert entry["fixed"] == {"group": 4, "qk_dim": 64, "v_dim": 64}
    assert not list(path.parent.glob("*.tmp"))  # the temporary file was renamed into place


def test_nearest_bucket():
    store({"rows": 16}, seq_q=1024, seq_k=1024)
    store({"rows": 64}, seq_q=8192, seq_k=8192)
    assert look(seq_q=1000, seq_k=1000) == {"rows": 16}  # 1000 buckets to 1024
    assert look(seq_q=1500, seq_k=1500) == {"rows": 16}  # 2048: one octave from 1024, two from 8192
    assert look(seq_q=6000, seq_k=6000) == {"rows": 64}  # 8192
    assert look(seq_q=100000, seq_k=100000) == {"rows": 64}  # beyond the largest: the nearest


def test_fixed_sizes_must_match():
    store({"rows": 16})
    assert look(qk_dim=128, v_dim=128) is None
    assert look(q_heads=16, kv_heads=2) is None  # another GQA group
    assert look(q_heads=16, kv_heads=4, batch=8) == {"rows": 16}  # same group; batch does not matter
    assert look(window=128) is None
    assert tuned.lookup("attention_fwd", backend="triton", device="cpu", shape=ATT) is None


def test_dtype_is_preferred_not_required():
    store({"rows": 16}, dtype="float32")
    store({"rows": 32}, dtype="bfloat16")
    assert look(dtype="bfloat16") == {"rows": 32}
    assert look(dtype="float32") == {"rows": 16}
    assert look() in ({"rows": 16}, {"rows": 32})


def test_answers_are_cached_in_memory(monkeypatch):
    store({"rows": 16})
    assert look() == {"rows": 16}
    calls = []
    monkeypatch.setattr(tuned.cache, "read_entries", lambda *a, **k: calls.append(1) or {})
    for _ in range(100):
        assert look(seq_q=4000, seq_k=4000) == {"rows": 16}  # same bucket: no file read
    assert calls == []


def _write(cache, text):
    path = cache / tuned.device_key("cpu") / "attention_fwd.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    tuned.invalidate()
    return path


def _tamper(cache, fn):
    path = store({"rows": 16})
    data = json.loads(path.read_text())
    fn(data)
    return _write(cache, json.dumps(data))


@pytest.mark.parametrize("case, fn, message", [
    ("other-device", lambda d: d["device"].update(key="cuda-nvidia-h100-sm90"), "another device"),
    ("other-torch", lambda d: d["backends"]["tvm"]["versions"].update(torch="1.0"), "torch 1.0"),
    ("other-tvm", lambda d: d["backends"]["tvm"]["versions"].update(tvm="0.1"), "tvm 0.1"),
    ("other-source", lambda d: d["backends"]["tvm"].update(source_hash="0" * 16), "another tvm kernel source"),
    ("other-format", lambda d: d.update(format="something/9"), "not a hysparse-tuned"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_untrusted_files_are_ignored_with_a_warning(cache, case, fn, message):
    _tamper(cache, fn)
    with pytest.warns(tuned.TunedConfigWarning, match=message):
        assert look() is None


def test_corrupt_file_is_ignored_and_replaced_by_store(cache):
    _write(cache, '{"format": "hysparse-tuned/1", "op": ')  # truncated
    with pytest.warns(tuned.TunedConfigWarning, match="unreadable"):
        assert look() is None
    store({"rows": 32})
    assert look() == {"rows": 32}


def test_shipped_defaults_used_when_the_user_has_none(cache, tmp_path, monkeypatch):
    store({"rows": 16}, seq_q=1024, seq_k=1024)
    shipped = tmp_path / "shipped"
    (shipped / tuned.device_key("cpu")).mkdir(parents=True)
    (cache / tuned.device_key("cpu") / "attention_fwd.json").rename(shipped / tuned.device_key("cpu") / "attention_fwd.json")
    monkeypatch.setattr(tuned.cache, "SHIPPED", shipped)
    tuned.invalidate()
    assert look() == {"rows": 16}  # from the package
    store({"rows": 64})  # the user's own entry for this bucket wins
    assert look() == {"rows": 64}
    assert look(seq_q=1024, seq_k=1024) == {"rows": 16}


def test_lock_refuses_a_second_holder(cache):
    path = cache / "x" / ".tuner.lock"
    with tuned.file_lock(path, blocking=False):
        with pytest.raises(tuned.TunerBusyError, match="another tuner"):
            with tuned.file_lock(path, blocking=False):
                pass
    with tuned.file_lock(path, blocking=False):  # released
        pass


def test_concurrent_stores_keep_every_entry():
    errors = []

    def work(i):
        try:
            store({"rows": 16 * (i + 1)}, seq_q=2 ** (6 + i), seq_k=2 ** (6 + i))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    for i in range(6):
        assert look(seq_q=2 ** (6 + i), seq_k=2 ** (6 + i)) == {"rows": 16 * (i + 1)}


def test_launch_warns_once_and_uses_the_heuristic():
    seen = []
    with pytest.warns(tuned.TunedConfigWarning, match="no tuned config for attention_fwd"):
        tuned.launch("attention_fwd", backend="tvm", shape=ATT, heuristic={"rows": 64}, run=seen.append)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tuned.launch("attention_fwd", backend="tvm", shape=ATT, heuristic={"rows": 64}, run=seen.append)
    assert seen == [{"rows": 64}, {"rows": 64}]


def test_failing_config_is_blacklisted_and_the_heuristic_runs(cache):
    store({"rows": 999})
    seen = []

    def run(cfg):
        seen.append(cfg)
        if cfg["rows"] == 999:
            raise RuntimeError("out of resources: shared memory")
        return "ok"

    with pytest.warns(tuned.TunedConfigWarning, match="failed at launch.*blacklisted"):
        assert tuned.launch("attention_fwd", backend="tvm", shape=ATT, heuristic={"rows": 64}, run=run) == "ok"
    assert seen == [{"rows": 999}, {"rows": 64}]
    bl = json.loads((cache / tuned.device_key("cpu") / "blacklist.json").read_text())
    assert bl["entries"][0]["config"] == {"rows": 999} and "out of resources" in bl["entries"][0]["reason"]
    tuned.invalidate()  # as a new process would: the blacklist is on disk
    assert look() is None
    seen.clear()
    tuned.launch("attention_fwd", backend="tvm", shape=ATT, heuristic={"rows": 64}, run=run)
    assert seen == [{"rows": 64}]


def test_input_errors_are_not_blamed_on_the_config(cache):
    store({"rows": 32})

    def run(cfg):
        raise ValueError("q: bad shape")

    with pytest.raises(ValueError, match="bad shape"):
        tuned.launch("attention_fwd", backend="tvm", shape=ATT, heuristic={"rows": 64}, run=run)
    assert not (cache / tuned.device_key("cpu") / "blacklist.json").exists()


def test_bucket_key_and_device_key():
    assert tuned.bucket_key(att(seq_q=3000, seq_k=3000)) == "group=4,qk_dim=64,v_dim=64|seq_k=4096,seq_q=4096"
    key = tuned.device_key("cpu")
    assert key.startswith("cpu-") and key.endswith(f"-{tuned.device_description('cpu')['cores']}c")
    with pytest.raises(ValueError, match="device: expected"):
        tuned.device_key("tpu")


def test_a_device_this_machine_lacks_has_no_tuned_configs(monkeypatch):
    monkeypatch.setattr(tuned.query, "_cuda_present", lambda: False)
    assert tuned.lookup("attention_fwd", backend="triton", device="cuda", shape=ATT) is None


def test_triton_launch_failure_with_a_tuned_config_is_blacklisted(monkeypatch):
    """Triton attention launches through the same ``tuned.launch`` as TVM: a tuned config that
    fails is blacklisted and the heuristic runs; an input error is raised as is."""
    from hysparse_kernels.ops.attention.triton import config

    monkeypatch.setattr(config, "interpreted", lambda: False)  # tuned configs are asked on the GPU path only
    answers = {"attention_fwd": {"block_m": 256, "block_n": 256, "num_warps": 8, "num_stages": 4}}
    monkeypatch.setattr(tuned.query, "lookup", lambda op, **kw: answers.get(op))
    banned = []
    monkeypatch.setattr(tuned.query, "blacklist", lambda op, **kw: banned.append((op, kw["config"], kw["reason"])))
    used = []
    shape = {"dqk": 128, "dv": 128, "sq": 4096, "sk": 4096, "group": 4}

    def launcher(cfg):
        used.append(cfg.block_m)
        if cfg.block_m == 256:
            raise RuntimeError("out of resource: shared memory, Required: 262144, Hardware limit: 232448")
        return "ok"

    with pytest.warns(tuned.TunedConfigWarning, match="failed at launch.*blacklisted"):
        assert config.launch("attention_fwd", shape, launcher) == "ok"
    assert used == [256, config.default_config("attention_fwd", {"dqk": 128, "dv": 128, "sk": 4096}).block_m]
    assert banned == [("attention_fwd", answers["attention_fwd"],
                       "RuntimeError: out of resource: shared memory, Required: 262144, Hardware limit: 232448")]

    def bad_input(cfg):
        raise ValueError("q: bad")

    with pytest.raises(ValueError, match="q: bad"):
        config.launch("attention_fwd", shape, bad_input)
    assert len(banned) == 1  # the heuristic failed too: not the config's fault
