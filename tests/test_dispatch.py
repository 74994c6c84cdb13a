"""Backend choice: explicit > use_backend() > HYSPARSE_BACKEND > auto, and its errors."""

import warnings

import pytest
import torch

import hysparse_kernels as hk
from hysparse_kernels import dispatch
from hysparse_kernels.backends import BackendStatus


@pytest.fixture
def fake_op(monkeypatch):
    """An op with reference, tvm and cutlass implementations, and controllable availability."""
    monkeypatch.setitem(dispatch._IMPLS, "demo_op", {
        "reference": "builtins:len", "tvm": "builtins:len", "cutlass": "builtins:len",
    })
    state = {"tvm": True, "cutlass": False}

    def fake_status(name):
        if name == "reference":
            return BackendStatus(name, True, "x", ("cpu",), "")
        if name == "tvm":
            ok = state["tvm"]
            return BackendStatus(name, ok, "x" if ok else None, ("cpu",) if ok else (), "" if ok else "not installed: pip install 'hysparse-kernels[tvm]'")
        if name == "cutlass":
            return BackendStatus(name, True, "x", (), "compiles with nvcc; running needs an sm80/sm90 GPU")
        return BackendStatus(name, False, None, (), "not installed")

    monkeypatch.setattr(dispatch, "status", fake_status)
    monkeypatch.setattr(dispatch, "_warned", set())
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    return state


def test_auto_prefers_tvm_on_cpu(fake_op):
    assert dispatch.resolve("demo_op", "cpu") == "tvm"


def test_auto_falls_back_with_one_warning(fake_op):
    fake_op["tvm"] = False
    with pytest.warns(dispatch.BackendFallbackWarning, match=r"demo_op: skipping tvm .*pip install 'hysparse-kernels\[tvm\]'"):
        assert dispatch.resolve("demo_op", "cpu") == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dispatch.resolve("demo_op", "cpu") == "reference"  # the second time is silent


def test_explicit_beats_context_beats_env(fake_op, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "tvm")
    assert dispatch.resolve("demo_op", "cpu") == "tvm"
    with hk.use_backend("reference"):
        assert dispatch.resolve("demo_op", "cpu") == "reference"
        assert dispatch.resolve("demo_op", "cpu", "tvm") == "tvm"
    assert dispatch.resolve("demo_op", "cpu") == "tvm"


def test_explicit_missing_backend_names_the_package(fake_op):
    fake_op["tvm"] = False
    with pytest.raises(dispatch.BackendUnavailableError, match=r"backend='tvm' was asked for demo_op, but not installed: pip install 'hysparse-kernels\[tvm\]'"):
        dispatch.resolve("demo_op", "cpu", "tvm")


def test_explicit_backend_that_cannot_run_on_device(fake_op):
    with pytest.raises(dispatch.BackendUnavailableError, match=r"cutlass cannot run cpu tensors here"):
        dispatch.resolve("demo_op", "cpu", "cutlass")


def test_explicit_unimplemented_backend(fake_op):
    with pytest.raises(dispatch.BackendUnavailableError, match=r"demo_op has no 'triton' implementation; it has \('reference', 'tvm', 'cutlass'\)"):
        dispatch.resolve("demo_op", "cpu", "triton")


def test_forced_backend_without_implementation_falls_back(fake_op):
    with hk.use_backend("triton"), pytest.warns(dispatch.BackendFallbackWarning, match="demo_op has no 'triton' backend"):
        assert dispatch.resolve("demo_op", "cpu") == "tvm"


def test_bad_names():
    with pytest.raises(ValueError, match=r"use_backend\(name\): expected one of .* got 'gpu'"):
        with hk.use_backend("gpu"):
            pass
    with pytest.raises(KeyError, match="unknown op 'nope'"):
        dispatch.resolve("nope", "cpu")


def test_env_var_bad_value(fake_op, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "fast")
    with pytest.raises(ValueError, match=r"HYSPARSE_BACKEND / use_backend: expected one of .* got 'fast'"):
        dispatch.resolve("demo_op", "cpu")


def test_context_manager_reaches_the_op():
    """use_backend is honoured by the registered op at run time (the op resolves, not the api)."""
    q = torch.randn(1, 2, 5, 8)
    with hk.use_backend("reference"):
        out = hk.attention(q, q, q)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True))


def test_import_loads_no_optional_backend():
    import subprocess
    import sys

    code = "import sys, hysparse_kernels; print(sorted(m for m in ('triton', 'tvm', 'cutlass_cppgen') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_dtype_limits(fake_op, monkeypatch):
    monkeypatch.setitem(dispatch._DTYPES, ("demo_op", "tvm"), (torch.float32,))
    assert dispatch.resolve("demo_op", "cpu", dtype=torch.float32) == "tvm"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto passes over it silently for float64
        assert dispatch.resolve("demo_op", "cpu", dtype=torch.float64) == "reference"
    with pytest.raises(dispatch.BackendUnavailableError, match=r"kernels take \(torch.float32,\), got torch.float64"):
        dispatch.resolve("demo_op", "cpu", "tvm", dtype=torch.float64)
    with hk.use_backend("tvm"), pytest.warns(dispatch.BackendFallbackWarning, match="'tvm' kernels do not take torch.float64"):
        assert dispatch.resolve("demo_op", "cpu", dtype=torch.float64) == "reference"


def test_float64_under_forced_triton_runs_the_reference(monkeypatch):
    monkeypatch.setattr(dispatch, "_warned", set())
    q = torch.randn(1, 2, 5, 16, dtype=torch.float64)
    with hk.use_backend("triton"), pytest.warns(dispatch.BackendFallbackWarning):
        out = hk.attention(q, q, q)
    torch.testing.assert_close(out, hk.attention(q, q, q, backend="reference"))
