"""Scratch and output memory of the CPU kernels (``backends/tvm/workspace.py``): workspaces are
reused per name, outputs are new tensors, the huge-page hint never changes what memory holds."""

from __future__ import annotations

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
