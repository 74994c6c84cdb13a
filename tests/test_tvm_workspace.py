"""Scratch and output memory of the CPU kernels (``backends/tvm/workspace.py``): workspaces are
reused per name, outputs are new tensors (large ones on memory no caller holds any more), the
huge-page hint never changes what memory holds."""

from __future__ import annotations

import gc

import pytest
import torch

from hysparse_kernels.backends.tvm import workspace as W


@pytest.mark.parametrize("hint", ["0", "1"])
def test_fresh_is_a_new_tensor_of_the_shape_and_dtype(hint, monkeypatch):
    monkeypatch.setenv(W.ENV_HUGE_PAGES, hint)
    a = W.fresh((3, W.HUGE_BYTES // 4), torch.float32)  # above the hint's threshold
    b = W.fresh((3, W.HUGE_BYTES // 4), torch.float32)
    assert a.shape == (3, W.HUGE_BYTES // 4) and a.dtype == torch.float32 and a.is_contiguous()
    assert a.data_ptr() != b.data_ptr()
    small = W.fresh((2, 5), torch.bfloat16)
    assert small.shape == (2, 5) and small.dtype == torch.bfloat16


def test_huge_page_hint_keeps_contents_and_takes_any_view():
    t = torch.arange(W.HUGE_BYTES // 2, dtype=torch.float32)  # 2x the threshold, already written
    want = t.clone()
    assert W.advise_huge_pages(t) is t
    W.advise_huge_pages(t[1:])  # an address off any page boundary
    W.advise_huge_pages(torch.zeros(3))  # small: nothing to do
    torch.testing.assert_close(t, want, rtol=0, atol=0)
    out = W.fresh((W.HUGE_BYTES // 4 + 3,))
    out.fill_(2.5)
    assert out.sum().item() == 2.5 * out.numel()


def test_workspace_is_reused_per_name_when_it_fits():
    a = W.workspace("test.a", 1000)
    b = W.workspace("test.a", 500)
    c = W.workspace("test.b", 500)
    assert b.data_ptr() == a.data_ptr() and b.numel() == 500
    assert c.data_ptr() != a.data_ptr()
    d = W.workspace("test.a", 2000)  # does not fit: a new, larger one
    assert d.numel() == 2000 and W.workspace("test.a", 1500).data_ptr() == d.data_ptr()


@pytest.fixture
def small_pool(monkeypatch):
    """The output pool with 1 MiB blocks and a 3 MiB budget, empty at the start."""
    from hysparse_kernels.backends.tvm import output_pool as P

    if P._use_count is None:
        pytest.skip("this torch has no storage use-count hook: the pool is off")
    monkeypatch.setattr(P, "MIN_BYTES", 1 << 20)
    monkeypatch.setenv(P.ENV_POOL_MB, "3")
    monkeypatch.setattr(P, "_blocks", [])  # this test's blocks only (another's may still be in use)
    yield P
    P.release()


def test_output_pool_reuses_a_block_only_once_nothing_holds_it(small_pool):
    n = (1 << 20) // 4  # 1 MiB of fp32
    a = W.fresh((4, n // 4))
    ptr = a.data_ptr()
    a.fill_(1.0)
    view = a[1:]
    del a
    b = W.fresh((4, n // 4))  # the view still holds the first block
    assert b.data_ptr() != ptr
    b.fill_(2.0)
    assert view.sum().item() == 3 * n // 4  # untouched by the second output
    del view
    c = W.fresh((n,), torch.bfloat16)  # 512 KiB: below the pool's smallest block, a plain tensor
    assert c.data_ptr() != ptr
    d = W.fresh((n // 2, 2), torch.float32)  # the first block, free again
    assert d.data_ptr() == ptr and d.shape == (n // 2, 2) and d.is_contiguous()
    assert small_pool.describe()["blocks"] == 2


def test_output_pool_keeps_within_its_budget_and_releases(small_pool):
    n = (1 << 20) // 4
    held = [W.fresh((n,)) for _ in range(5)]  # 5 MiB asked, budget 3: two are plain tensors
    assert len(small_pool._blocks) == 3
    ptrs = {t.data_ptr() for t in held}
    assert len(ptrs) == 5
    big = W.fresh((3 * n,))  # 3 MiB while 3 blocks are in use: over budget, a plain tensor
    assert len(small_pool._blocks) == 3
    del held, big
    info = small_pool.describe()
    assert info["in_use_mb"] == 0 and info["free_mb"] == 3
    big = W.fresh((3 * n,))  # the free 1 MiB blocks do not fit it: they make room for a 3 MiB block
    assert len(small_pool._blocks) == 1 and small_pool._blocks[0].nbytes() == 3 << 20
    del big
    assert small_pool.release() == 3 << 20 and not small_pool._blocks


def test_output_pool_never_reuses_memory_shared_with_another_process(small_pool):
    n = (1 << 20) // 4
    a = W.fresh((n,))
    a.share_memory_()  # as torch.multiprocessing does before sending it: another process may hold it
    a.fill_(7.0)
    shared_ptr = a.data_ptr()  # (share_memory_ moved the block: its old address may come back)
    del a
    b = W.fresh((n,))
    assert b.data_ptr() != shared_ptr and not b.untyped_storage().is_shared()
    assert len(small_pool._blocks) == 1  # the shared block left the pool


def test_output_pool_is_off_without_the_use_count_hook(small_pool, monkeypatch):
    """A torch without ``_storage_Use_Count`` cannot tell when a block is free: every output new."""
    monkeypatch.setattr(small_pool, "_use_count", None)
    assert small_pool.budget_bytes() == 0
    n = (1 << 20) // 4
    a = W.fresh((n,))
    del a
    b = W.fresh((n,))
    assert b.numel() == n and not small_pool._blocks and not small_pool.describe()["available"]


def test_output_pool_off_and_bad_settings(small_pool, monkeypatch):
    monkeypatch.setenv(small_pool.ENV_POOL_MB, "0")
    a = W.fresh(((1 << 20) // 4,))
    assert a.numel() == (1 << 20) // 4 and not small_pool._blocks
    for bad in ("lots", "-1"):
        monkeypatch.setenv(small_pool.ENV_POOL_MB, bad)
        with pytest.raises(ValueError, match="HYSPARSE_OUTPUT_POOL_MB"):
            W.fresh(((1 << 20) // 4,))


def test_swa_outputs_of_consecutive_calls_stay_correct(small_pool):
    """Two large SWA outputs, the first dropped before the second call: the pooled memory holds
    the second call's result, equal to the reference."""
    pytest.importorskip("tvm")
    import hysparse_kernels as hk

    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 600, 128), torch.randn(1, 2, 600, 128), torch.randn(1, 2, 600, 128)  # out 1.2 MiB
    # The first custom-op call of a process imports parts of torch lazily, and those imports leave
    # frames (holding the call's output) in a reference cycle until the next garbage collection.
    hk.attention(q, k, v, window=128, backend="tvm")
    gc.collect()
    small_pool.release()
    first = hk.attention(q, k, v, window=128, backend="tvm")
    ptr = first.data_ptr()
    assert small_pool.describe()["blocks"] == 1
    del first
    q2 = torch.randn_like(q)
    second = hk.attention(q2, k, v, window=128, backend="tvm")
    assert second.data_ptr() == ptr
    ref = hk.attention(q2.double(), k.double(), v.double(), window=128, backend="reference")
    torch.testing.assert_close(second.double(), ref, rtol=1e-4, atol=1e-5)
