"""Ingest: device messages from the broker into the store, scored by the heavy model, acked.

Concurrency model (one per process, STYLE.md)::

    paho network thread ──put_nowait──▶ bounded queue ──▶ ONE worker thread ──▶ store
      (HubLink: topic check,            (queue.Queue,      (IngestWorker: decode,    (single
       never blocks, drops and           200,000 by          heavy model per batch,    writer)
       counts when full)                 default)            write, then ack)
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
beyond it messages are dropped and counted (``dropped:hub_queue_full``). The
hub never acks what it has not stored, so a device whose outbox keeps unacked
messages sends them again.
"""

from cloud_hub.ingest.transport import DEFAULT_QUEUE_MAX, BrokerConnectError, HubLink, Incoming
from cloud_hub.ingest.worker import IngestConfig, IngestLink, IngestStats, IngestWorker

__all__ = [
    "DEFAULT_QUEUE_MAX",
    "BrokerConnectError",
    "HubLink",
    "Incoming",
    "IngestConfig",
    "IngestLink",
    "IngestStats",
    "IngestWorker",
]
