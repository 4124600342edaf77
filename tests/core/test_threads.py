"""``map_slices``: the list comprehension's result, in order, whatever the thread count."""

from __future__ import annotations

import threading

import pytest

from ofgr_core.common.threads import map_slices


@pytest.mark.parametrize("n", [0, 1, 2, 7, 100])
@pytest.mark.parametrize("threads", [0, 1, 2, 3, 8])
def test_equals_the_comprehension(n: int, threads: int) -> None:
    items = [f"x{i}" for i in range(n)]
    assert map_slices(str.upper, items, threads) == [x.upper() for x in items]


def test_slices_run_on_pool_threads() -> None:
    seen: dict[int, set[int]] = {}

    def where(i: int) -> int:
        seen.setdefault(threading.get_ident(), set()).add(i)
        return i

    assert map_slices(where, list(range(10)), 3) == list(range(10))
    assert threading.get_ident() not in seen  # the caller only waits
    # the items went out in three contiguous slices, each walked by one thread (a pool thread may take two)
    slices = [{0, 1, 2}, {3, 4, 5}, {6, 7, 8, 9}]
    for items in seen.values():
        assert items == set().union(*[s for s in slices if s & items])


def test_an_error_reaches_the_caller() -> None:
    def fail_on_five(i: int) -> int:
        if i == 5:
            raise OSError("unreadable: 5")
        return i

    with pytest.raises(OSError, match="unreadable: 5"):
        map_slices(fail_on_five, list(range(10)), 2)
