"""ReadingWait: the source's wait runs the reading loop's work when woken during an update."""

from __future__ import annotations

import threading

import pytest

from edge_agent.waiting import ReadingWait

pytestmark = pytest.mark.timeout(20)


class _Loop:
    """The reading loop's side: whether an update is busy, and where its work ran."""

    def __init__(self, busy: bool) -> None:
        self.busy = busy
        self.ran_on: list[int] = []

    def is_busy(self) -> bool:
        return self.busy

    def work(self) -> None:
        self.ran_on.append(threading.get_ident())


def _wake_when_waiting(wait: ReadingWait) -> threading.Thread:
    t = threading.Thread(target=wait.wake)
    t.start()
    return t


def test_while_busy_a_wake_runs_the_work_on_the_waiting_thread_and_the_wait_goes_on() -> None:
    loop = _Loop(busy=True)
    stop = threading.Event()
    wait = ReadingWait(stop, loop.is_busy, loop.work, slice_s=0.05)
    t = _wake_when_waiting(wait)
    assert wait.wait(0.5) is False  # the whole delay was waited: not a stop
    t.join(5)
    me = threading.get_ident()
    assert loop.ran_on and set(loop.ran_on) == {me}  # woken, and every slice looks too


def test_while_idle_it_is_the_stop_events_own_wait() -> None:
    loop = _Loop(busy=False)
    stop = threading.Event()
    wait = ReadingWait(stop, loop.is_busy, loop.work, slice_s=0.05)
    assert wait.wait(0.2) is False
    assert loop.ran_on == []
    # A wake while idle is kept for the next look (the next reading takes it anyway).
    wait.wake()
    assert wait.is_set() is False
    assert loop.ran_on == [threading.get_ident()]


def test_a_stop_ends_the_wait_while_busy_or_idle() -> None:
    for busy in (True, False):
        loop = _Loop(busy=busy)
        stop = threading.Event()
        wait = ReadingWait(stop, loop.is_busy, loop.work, slice_s=0.05)
        timer = threading.Timer(0.1, stop.set)
        timer.start()
        assert wait.wait(10) is True
        assert wait.is_set() is True
        timer.join(5)


def test_an_update_that_ends_during_the_wait_hands_back_to_the_stop_event() -> None:
    loop = _Loop(busy=True)
    stop = threading.Event()

    def work() -> None:
        loop.work()
        loop.busy = False  # the update committed in this step

    wait = ReadingWait(stop, loop.is_busy, work, slice_s=0.05)
    t = _wake_when_waiting(wait)
    assert wait.wait(0.3) is False
    t.join(5)
    assert len(loop.ran_on) == 1
