"""Ingest: device messages from the broker into the store, scored by the heavy model, acked.

Concurrency model (one per process, STYLE.md)::

    paho network thread ──put_waiting──▶ bounded queue ──▶ ONE worker thread ──▶ store
      (HubLink: topic check;             (IngestQueue:      (IngestWorker: decode,    (single
       waits when the queue is full:      200,000 msgs and    heavy model per batch,    writer)
       backpressure to the broker)        256 MiB default)    write, then ack)
                                                                  │
                                        paho publish ◀── ack ─────┘

- :class:`HubLink`'s paho thread only checks that a topic is one it subscribed
  to and hands ``(topic, payload, received_at)`` to the queue; it holds no lock
  of ours while paho calls it, and no lock of ours is held around a paho call.
- :class:`IngestWorker` is the only consumer of the queue and the store's only
  writer: each batch is one heavy-model call and one ``write_stream``
  transaction; acks are published only after that transaction committed.
- Other threads (the API) read :meth:`IngestWorker.stats` and the store.

Backpressure is explicit: when the worker falls behind, the queue fills, and
paho's thread waits for room (counted ``backpressure_waits``), so the broker
holds the rest. The hub never acks what it has not stored, so a device's
outbox keeps what the hub lost (a broker that dropped for the hub, a hub
killed with messages queued) and sends it again.
"""

from cloud_hub.ingest.transport import (
    DEFAULT_QUEUE_MAX,
    DEFAULT_QUEUE_MAX_BYTES,
    BrokerConnectError,
    HubLink,
    Incoming,
    IngestQueue,
)
from cloud_hub.ingest.worker import IngestConfig, IngestLink, IngestStats, IngestWorker

__all__ = [
    "DEFAULT_QUEUE_MAX",
    "DEFAULT_QUEUE_MAX_BYTES",
    "BrokerConnectError",
    "HubLink",
    "Incoming",
    "IngestConfig",
    "IngestLink",
    "IngestQueue",
    "IngestStats",
    "IngestWorker",
]
