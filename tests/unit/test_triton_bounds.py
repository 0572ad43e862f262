"""The interpreter's bounds check (``reimpl_parity.triton_bounds``) catches what it must.

conftest opens it around every test where the interpreter runs, so these kernels run under
it: one that stays inside its tensors passes, and each kind of stray access (past a view's
end inside its storage, a store past the end, a pointer taken from a table to a tensor no
binding checked) fails before the access happens.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

INTERPRETED = (
    importlib.util.find_spec("triton") is not None
    and not torch.cuda.is_available()
    and os.environ.get("TRITON_INTERPRET") == "1"
)
pytestmark = pytest.mark.skipif(
    not INTERPRETED, reason="checks the Triton interpreter (TRITON_INTERPRET=1, CPU only)"
)

if INTERPRETED:
    import triton
    import triton.language as tl

    @triton.jit
    def _copy(X, Y, n_read, n_write, BLOCK: tl.constexpr):
        o = tl.arange(0, BLOCK)
        tl.store(Y + o, tl.load(X + o, mask=o < n_read, other=0.0), mask=o < n_write)

    @triton.jit
    def _through_table(T, Y, n, BLOCK: tl.constexpr):
        o = tl.arange(0, BLOCK)
        x = tl.load(T).to(tl.pointer_type(tl.float32), bitcast=True)
        tl.store(Y + o, tl.load(x + o, mask=o < n), mask=o < n)


def _out_of_bounds(e: BaseException) -> bool:
    return "OutOfBounds" in f"{type(e).__name__} {e!r}"


def test_in_bounds_passes() -> None:
    from reimpl_parity.triton_bounds import active

    assert active()
    x, y = torch.arange(8.0), torch.zeros(8)
    _copy[(1,)](x[:5], y, 5, 5, BLOCK=8)
    assert y.tolist() == [0, 1, 2, 3, 4, 0, 0, 0]


@pytest.mark.parametrize(
    "n_read, n_write", [(6, 5), (5, 9)], ids=["read_past_view", "write_past_end"]
)
def test_stray_access_is_caught_before_it_happens(n_read: int, n_write: int) -> None:
    buf = torch.arange(16.0)
    x, y = buf[:5], torch.full((8,), -1.0)
    with pytest.raises(Exception) as info:
        _copy[(1,)](x, y[:8], n_read, n_write, BLOCK=16)
    assert _out_of_bounds(info.value), info.value
    assert (y == -1).all()  # the kernel stopped at the check, before its store


def test_unvetted_pointer_from_a_table_is_caught() -> None:
    hidden, y = torch.arange(4.0), torch.zeros(4)
    table = torch.tensor([hidden.data_ptr()], dtype=torch.int64)
    with pytest.raises(Exception) as info:
        _through_table[(1,)](table, y, 4, BLOCK=4)
    assert _out_of_bounds(info.value), info.value
