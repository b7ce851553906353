"""The batch-cutting rule on its own (pure logic, no model)."""

from __future__ import annotations

import asyncio

import pytest

from tandem.workers.errors import Overloaded
from tandem.workers.queue import BatchQueue, Entry


def entries(loop, costs, key=None, deadline=None):
    return [Entry(i, c, key, loop.create_future(), 0.0, deadline) for i, c in enumerate(costs)]


async def test_batch_respects_item_and_padded_token_limits():
    loop = asyncio.get_running_loop()
    q = BatchQueue("t", capacity=100, max_items=4, max_tokens=100)
    q.put(entries(loop, [10, 10, 10, 10, 10, 10]))
    batch, _ = q.cut(0)
    assert len(batch) == 4 and len(q) == 2
    q2 = BatchQueue("t", capacity=100, max_items=8, max_tokens=100)
    q2.put(entries(loop, [30, 30, 30, 30]))
    batch, _ = q2.cut(0)
    assert len(batch) == 3  # 4 x 30 padded tokens would exceed 100


async def test_batch_groups_similar_lengths_and_always_takes_the_oldest():
    loop = asyncio.get_running_loop()
    q = BatchQueue("t", capacity=100, max_items=2, max_tokens=0)
    es = entries(loop, [200, 5, 6, 190, 7])
    q.put(es)
    batch, _ = q.cut(0)
    assert es[0] in batch and es[3] in batch  # head (200) paired with its nearest length (190)
    batch, _ = q.cut(0)
    assert sorted(e.cost for e in batch) == [5, 6]
    assert [e.cost for e in batch] == sorted(e.cost for e in batch)  # sorted by length


async def test_oversized_head_runs_alone():
    loop = asyncio.get_running_loop()
    q = BatchQueue("t", capacity=10, max_items=4, max_tokens=50)
    q.put(entries(loop, [80, 10]))
    batch, _ = q.cut(0)
    assert [e.cost for e in batch] == [80]


async def test_keys_are_not_mixed_and_capacity_is_enforced():
    loop = asyncio.get_running_loop()
    q = BatchQueue("recall", capacity=3, max_items=8)
    q.put(entries(loop, [1], key="a") + entries(loop, [1], key="b") + entries(loop, [1], key="a"))
    with pytest.raises(Overloaded, match="recall queue full: 3 of 3"):
        q.put(entries(loop, [1]))
    batch, _ = q.cut(0)
    assert [e.key for e in batch] == ["a", "a"] and len(q) == 1


async def test_cancelled_and_expired_entries_leave_the_queue():
    loop = asyncio.get_running_loop()
    q = BatchQueue("t", capacity=10, max_items=8)
    live = entries(loop, [1, 1])
    old = entries(loop, [1], deadline=5.0)
    q.put(live + old)
    live[0].future.cancel()
    await asyncio.sleep(0)
    assert len(q) == 2
    batch, expired = q.cut(now=10.0)
    assert batch == [live[1]] and expired == old and len(q) == 0


async def test_the_calibration_cuts_batches_as_the_queue_does():
    # The backend choice calibrates on batches cut by `cut_all`: the same rule as a queue holding those items.
    from tandem.workers.queue import cut_all

    loop = asyncio.get_running_loop()
    costs = [(i * 37) % 90 + 10 for i in range(150)]
    q = BatchQueue("t", capacity=1000, max_items=8, max_tokens=300)
    q.put(entries(loop, costs))
    from_queue = []
    while len(q):
        batch, _ = q.cut(0)
        from_queue.append(sorted(e.payload for e in batch))
    assert [sorted(b) for b in cut_all(costs, 8, 300)] == from_queue and len(from_queue) > 10
