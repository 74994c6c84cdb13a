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


def _kernel_accepts_short(x, *rest):
    return len(x) <= 3


def test_inputs_a_kernel_does_not_take_run_on_the_next_backend(fake_op, monkeypatch):
    """A backend's ``accepts`` predicate sends other inputs down the auto order (the reference
    last), explicit or auto; the kernel itself never sees them."""
    seen = []
    kernels = {"tvm": lambda x: seen.append(("tvm", x)) or "tvm", "reference": lambda x: seen.append(("ref", x)) or "ref"}
    monkeypatch.setattr(dispatch, "get_impl", lambda op, backend: kernels[backend])
    monkeypatch.setitem(dispatch._ACCEPTS, ("demo_op", "tvm"), f"{__name__}:_kernel_accepts_short")
    dispatch._predicate.cache_clear()
    try:
        assert dispatch.call("demo_op", None, "cpu", "abc") == "tvm"
        assert dispatch.call("demo_op", None, "cpu", "abcd") == "ref"
        assert dispatch.call("demo_op", "tvm", "cpu", "abcd") == "ref"  # asked for by name: the same fallback
        assert seen == [("tvm", "abc"), ("ref", "abcd"), ("ref", "abcd")]
        assert dispatch.accepts("demo_op", "tvm", "ab") and dispatch.accepts("demo_op", "reference", "abcdef")
    finally:
        dispatch._predicate.cache_clear()


def test_block_sizes_the_kernels_do_not_take_run_on_the_reference():
    """TVM takes blocks of 8..1024 keys: a 4-key block runs on the reference, asked for by name."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 8, 16), torch.randn(1, 1, 8, 16), torch.randn(1, 1, 8, 16)
    out, lse, scores = hk.attention_with_block_scores(q, k, v, block_size=4, backend="tvm")
    ref = hk.attention_with_block_scores(q, k, v, block_size=4, backend="reference")
    for got, want in zip((out, lse, scores), ref):
        torch.testing.assert_close(got, want)
    assert not dispatch.accepts("attention_with_block_scores", "tvm", q, k, v, 4, True, 0.25)
    assert dispatch.accepts("attention_with_block_scores", "tvm", q, k, v, 8, True, 0.25)


def test_cutlass_declares_what_it_takes():
    """CUTLASS's grouped GEMM takes 16-bit operands with rows of 16-byte multiples; dispatch, not
    the kernel, sends the rest on (to Triton on a GPU)."""
    assert not dispatch.takes("grouped_gemm", "cutlass", torch.float32)
    assert dispatch.takes("grouped_gemm", "cutlass", torch.bfloat16)
    x, w, off = torch.empty(4, 16, dtype=torch.bfloat16), torch.empty(2, 24, 16, dtype=torch.bfloat16), torch.zeros(3)
    assert dispatch.accepts("grouped_gemm", "cutlass", x, w, off)
    assert not dispatch.accepts("grouped_gemm", "cutlass", x[:, :12], w[:, :, :12], off)


def test_no_kernel_module_calls_back_into_dispatch():
    """The kernels of every backend stand below dispatch: none imports it."""
    import ast
    import pathlib

    ops = pathlib.Path(hk.__file__).parent / "ops"
    kernels = [p for p in ops.rglob("*.py") if p.name not in ("api.py", "ops.py", "reference.py", "__init__.py", "checks.py")
               or p.parent.name in ("tvm", "triton")]
    assert len(kernels) > 10
    offenders = []
    for path in kernels:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
            module = getattr(node, "module", None) or ""
            if "dispatch" in module or "dispatch" in names:
                offenders.append(f"{path.relative_to(ops)}:{node.lineno}")
    assert not offenders, offenders
