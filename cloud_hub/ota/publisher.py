"""Desired state kept in the store and sent on the broker (retained), and sent again.

:class:`DesiredPublisher` is the one writer of desired state in a running hub:
the API (``PUT /v1/devices/NAME/desired``) and, later, rollouts set it; ingest
tells it what each device reports running (births and heartbeats) and it
re-sends where they differ (:func:`cloud_hub.ota.desired.needs_resend`). It
keeps the desired records in memory (one per device with one), so a heartbeat
costs a dictionary lookup, not a query. Thread-safe: ingest's worker and the
API's threads call it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from cloud_hub.ota.desired import desired_message, needs_resend
from cloud_hub.store.base import DesiredRecord
from shared.messages import encode
from shared.topics import Kind, Topics

__all__ = ["DEFAULT_RESEND_INTERVAL_S", "DesiredPublisher"]

log = logging.getLogger(__name__)

DEFAULT_RESEND_INTERVAL_S = 10.0
Publish = Callable[[str, bytes, int, bool], bool]
"""``(topic, payload, qos, retain) -> handed over`` (the hub link's ``publish``)."""


class DesiredPublisher:
    def __init__(
        self,
        store: Any,
        publish: Publish,
        topics: Topics,
        *,
        resend_interval_s: float = DEFAULT_RESEND_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._publish = publish
        self._topics = topics
        self._interval = resend_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._desired: dict[str, DesiredRecord] = {d.device: d for d in store.desired_all()}
        self._sent: dict[str, float] = {}
        self._told_again: dict[str, tuple[str, str]] = {}
        self.sent = 0
        """Desired messages handed to the broker link (first sends and re-sends)."""
        self.resent = 0
        """Of which re-sends after a birth or heartbeat showed another model."""
        self.send_failures = 0

    def get(self, device: str) -> DesiredRecord | None:
        with self._lock:
            return self._desired.get(device)

    def all(self) -> list[DesiredRecord]:
        with self._lock:
            return sorted(self._desired.values(), key=lambda d: d.device)

    def set(self, records: Sequence[DesiredRecord]) -> None:
        """Store ``records`` (durably, first) and send each device its desired message."""
        self._store.set_desired(records)
        with self._lock:
            for d in records:
                self._desired[d.device] = d
        for d in records:
            self._send(d)

    def send_all(self) -> int:
        """Send every device its desired message (at hub start: a restarted broker may
        have lost its retained messages). Returns how many."""
        records = self.all()
        for d in records:
            self._send(d)
        return len(records)

    def on_report(self, device: str, model: str | None, version: str | None) -> bool:
        """A birth or heartbeat of ``device`` says it runs ``model`` ``version``: send its
        desired message again if that differs (rate-limited). Returns True if sent."""
        now = self._clock()
        with self._lock:
            d = self._desired.get(device)
            if d is None or not needs_resend(
                d, (model, version), self._sent.get(device), now, self._interval
            ):
                return False
        with self._lock:
            self.resent += 1
            first = self._told_again.get(device) != (d.model, d.version)
            self._told_again[device] = (d.model, d.version)
        # Once per device and desired version at INFO: an agent that takes its time (or
        # cannot update) would otherwise log a line per heartbeat, forever.
        log.log(
            logging.INFO if first else logging.DEBUG,
            "device %r runs %s %s, desired %s %s: sending its desired state again%s",
            device,
            model,
            version,
            d.model,
            d.version,
            f" (again at most every {self._interval:g} s; logged at DEBUG from now on)"
            if first
            else "",
        )
        self._send(d)
        return True

    def _send(self, d: DesiredRecord) -> None:
        topic = self._topics.topic(d.device, Kind.DESIRED)
        ok = self._publish(topic, encode(desired_message(d)), 1, True)
        with self._lock:
            if ok:
                self._sent[d.device] = self._clock()
                self.sent += 1
            else:
                self.send_failures += 1
        if not ok:
            log.warning(
                "desired state for %r not handed to the broker link (its queue is full); "
                "it goes again at the device's next heartbeat",
                d.device,
            )
