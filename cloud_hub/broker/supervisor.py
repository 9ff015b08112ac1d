"""Keep the embedded broker running: notice when its process exits, say why, start it again.

:class:`BrokerSupervisor` is one daemon thread in the hub's process. It polls
the child (a cheap ``waitpid``) a few times a second; when the child has
exited it logs the exit status (the signal, for a kill), the last lines of the
broker's log and the delay before the restart, then starts the broker again on
the same port, waiting as :class:`~cloud_hub.broker.restart.RestartPolicy`
says (doubling delays while it keeps dying, reset after a stable run). Each
exit and restart is counted; :meth:`BrokerSupervisor.health` is the
``embedded_broker`` entry of ``/healthz``.

The broker starts with no sessions after a crash: the hub's link reconnects
and subscribes again on its own (:class:`~cloud_hub.ingest.transport.HubLink`),
and the broker holds devices' connections until it has
(:mod:`cloud_hub.broker.gate`), so no device publishes into a broker where
nobody listens.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from cloud_hub.broker.embedded import BrokerStartError, EmbeddedBroker
from cloud_hub.broker.restart import RestartPolicy
from cloud_hub.health import PartHealth

__all__ = ["BrokerSupervisor", "describe_exit"]

log = logging.getLogger(__name__)


def describe_exit(returncode: int) -> str:
    """``exited with status 1`` or ``was killed by SIGKILL``.

    >>> describe_exit(-9), describe_exit(3)
    ('was killed by SIGKILL', 'exited with status 3')
    """
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


class BrokerSupervisor:
    """Restarts ``broker`` whenever its process exits, until :meth:`stop`.

    Start it after the broker's first successful start; stop it before
    stopping the broker.
    """

    def __init__(
        self,
        broker: EmbeddedBroker,
        policy: RestartPolicy | None = None,
        *,
        poll_s: float = 0.2,
    ) -> None:
        self._broker = broker
        self._policy = policy or RestartPolicy()
        self._poll_s = poll_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._up = True
        self._since = time.time()
        self._reason: str | None = None
        self._exits = 0
        self._restarts = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hub-broker-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop watching (a restart under way finishes first, within ``timeout`` s)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def health(self) -> PartHealth:
        with self._lock:
            return PartHealth(
                up=self._up,
                since=self._since,
                reason=self._reason,
                check=None
                if self._up
                else "the hub's log, which quotes the end of the broker's log",
                counts={"exits": self._exits, "restarts": self._restarts},
            )

    # -- the supervisor's thread ---------------------------------------------------------------

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stopping.wait(self._poll_s):
            code = self._broker.returncode
            if code is None:
                continue
            ran_s = time.monotonic() - started
            delay = self._policy.next_delay(ran_s)
            self._exited(code, ran_s, delay)
            if not self._restart(delay):
                return
            started = time.monotonic()

    def _exited(self, code: int, ran_s: float, delay: float) -> None:
        what = describe_exit(code)
        with self._lock:
            self._up = False
            self._since = time.time()
            self._reason = f"the broker process {what} after {ran_s:.1f} s; restarting"
            self._exits += 1
        tail = self._broker.log_tail()
        log.error(
            "the embedded broker on %s %s after running %.1f s; devices cannot connect until "
            "it is back. Restarting it in %.1f s.%s",
            self._broker.url,
            what,
            ran_s,
            delay,
            f"\n--- broker log {self._broker.log_path} (last lines) ---\n{tail}" if tail else "",
        )

    def _restart(self, delay: float) -> bool:
        """Start the broker again, retrying with growing delays; False if told to stop."""
        while not self._stopping.wait(delay):
            try:
                self._broker.start()
            except BrokerStartError as exc:
                delay = self._policy.next_delay(0.0)
                with self._lock:
                    self._reason = "the broker process does not start again; retrying"
                log.error(
                    "the embedded broker did not start again: %s; next attempt in %.1f s",
                    exc,
                    delay,
                )
                continue
            with self._lock:
                self._up = True
                self._since = time.time()
                self._restarts += 1
                count = self._restarts
            log.warning(
                "the embedded broker is running again on %s (pid %s, restart %d)",
                self._broker.url,
                self._broker.pid,
                count,
            )
            return True
        return False
