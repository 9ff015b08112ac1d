"""The epoch counter on disk, and the heartbeat's counters and process figures."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from edge_agent.epoch import next_epoch
from edge_agent.stats import Counters, ProcessUsage

pytestmark = pytest.mark.timeout(30)


# -- epoch --------------------------------------------------------------------------------------


def test_a_new_state_dir_starts_at_unix_time_and_counts_up(tmp_path: Path) -> None:
    state = tmp_path / "var" / "agent"  # created on first use
    before = int(time.time())
    first = next_epoch(state)
    assert before <= first <= int(time.time())
    assert next_epoch(state) == first + 1
    assert next_epoch(state) == first + 2
    assert (state / "epoch").read_text(encoding="ascii") == f"{first + 2}\n"
    assert sorted(p.name for p in state.iterdir()) == ["epoch"]  # no temp file left


def test_a_wiped_state_dir_never_repeats_an_epoch(tmp_path: Path) -> None:
    state = tmp_path / "agent"
    used = [next_epoch(state, now=1_800_000_000.5) for _ in range(5)]  # five quick restarts
    assert used == list(range(1_800_000_000, 1_800_000_005))
    (state / "epoch").unlink()  # the disk was wiped; the device restarts a minute later
    assert next_epoch(state, now=1_800_000_060.0) == 1_800_000_060


@pytest.mark.parametrize(
    "content", [b"garbage\n", b"", b"-4\n", b"\xff\xfe\x00", b"12.5\n"], ids=repr
)
def test_corrupt_epoch_file_jumps_to_unix_time(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "epoch").write_bytes(content)
    before = int(time.time())
    with caplog.at_level(logging.WARNING, logger="edge_agent.epoch"):
        epoch = next_epoch(tmp_path)
    assert before + 1 <= epoch <= int(time.time()) + 1
    assert "corrupt" in caplog.text
    assert str(tmp_path / "epoch") in caplog.text
    assert (tmp_path / "epoch").read_text(encoding="ascii") == f"{epoch}\n"
    assert next_epoch(tmp_path) == epoch + 1  # and counts on from there


def test_epoch_file_is_read_back_across_restarts(tmp_path: Path) -> None:
    (tmp_path / "epoch").write_text("  41 \n", encoding="ascii")
    assert next_epoch(tmp_path) == 42


# -- counters -------------------------------------------------------------------------------------


def test_counters() -> None:
    c = Counters()
    assert c.snapshot() == {}
    c.add("dropped:inbox_full")
    c.add("dropped:inbox_full", 4)
    c.add("invalid:not_json")
    snap = c.snapshot()
    assert snap == {"dropped:inbox_full": 5, "invalid:not_json": 1}
    snap["dropped:inbox_full"] = 0
    assert c.snapshot()["dropped:inbox_full"] == 5  # a snapshot is a copy


def test_counters_from_many_threads() -> None:
    c = Counters()
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        for _ in range(2000):
            c.add("n")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.snapshot() == {"n": 16_000}


# -- process figures ----------------------------------------------------------------------------


def test_process_rss_is_what_psutil_reports() -> None:
    psutil = pytest.importorskip("psutil")  # the benches' dependency, not the agent's
    usage = ProcessUsage()
    ours, theirs = usage.rss_bytes(), psutil.Process().memory_info().rss
    assert ours == pytest.approx(theirs, rel=0.05)


def test_process_cpu_counts_this_process_since_the_last_call() -> None:
    usage = ProcessUsage()
    spent = time.process_time()
    while time.process_time() - spent < 0.05:  # burn some CPU
        pass
    busy = usage.cpu_percent()
    assert busy > 0.0
    time.sleep(0.05)  # CPU idle: the next figure covers only this
    assert usage.cpu_percent() < busy
