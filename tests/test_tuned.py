"""The untuned-config warning: one line per process and device, whichever ops run untuned."""

import warnings

import pytest

from hysparse_kernels import tuned

ATT = {"batch": 1, "q_heads": 8, "kv_heads": 2, "qk_dim": 64, "v_dim": 64, "seq_q": 512, "seq_k": 512}
MOE = {"tokens": 64, "hidden": 64, "experts": 8, "top_k": 2, "intermediate": 32}


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(tuned.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setattr(tuned, "SHIPPED", tmp_path / "shipped")  # nothing shipped either
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
