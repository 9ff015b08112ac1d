"""The edgeloop edge agent: score every reading locally, act at once, publish over MQTT.

Data flow, one module per step: ``sources/`` (a reading enters) →
:mod:`edge_agent.reading` (input checks, the device's baseline
(:mod:`shared.baseline`), :mod:`shared.features`, :mod:`edge_agent.engine`
(int8 ONNX scores), :mod:`edge_agent.rules` (urgent?)) → :mod:`edge_agent.actuators`
(local action) → :mod:`edge_agent.batcher` and :mod:`edge_agent.outbox`
(staged, then given a seq and written to disk) → :mod:`edge_agent.transport`
(sent, and kept until the hub acks it). :mod:`edge_agent.agent`
wires them; :mod:`edge_agent.cli` is the entry point.

Concurrency model: three threads, each with one job.

- The *reading loop* (the main thread) pulls a reading, scores it, decides,
  acts and stages. It never touches the network or the disk, so a decision
  and its action never wait for either.
- The *link thread* waits on one event and, when woken or due, seals overdue
  batches, writes staged messages to the outbox (seq, SQLite commit, fsync on
  its schedule), sends what is unsent, applies acks, resends when due,
  handles incoming messages and sends heartbeats. It sleeps while nothing is
  due (idle CPU is ~0).
- paho's *network thread* only keeps the connection and puts incoming
  messages on a bounded inbox.
- With OTA on (the default), the *OTA worker* downloads, verifies, stages
  and smoke-tests a desired model and writes the update's files; the reading
  loop runs the update state machine between two readings and swaps the
  model there (:mod:`edge_agent.ota.runner`). It sleeps while no update is
  under way.

``edgeloop-agent`` keeps the three on one CPU (``--cpu``): on two, the others
take the GIL in the middle of a reading; :mod:`edge_agent.scheduling` says why.

Backpressure is explicit: the staging queue, the outbox (bytes, messages,
age), the inbox and paho's own queue are all bounded. Everything dropped is
counted and reported in the heartbeat, and every dropped seq is declared to
the hub (see :mod:`edge_agent.outbox`).
"""

__all__: list[str] = []
