"""The edgeloop edge agent: score every reading locally, act at once, publish over MQTT.

Data flow, one module per step: ``sources/`` (a reading enters) →
:mod:`shared.features` (features) → :mod:`edge_agent.engine` (int8 ONNX
scores) → :mod:`edge_agent.rules` (urgent?) → :mod:`edge_agent.actuators`
(local action) → :mod:`edge_agent.batcher` and :mod:`edge_agent.outbox`
(queued with a seq) → :mod:`edge_agent.transport` (sent). :mod:`edge_agent.agent`
wires them; :mod:`edge_agent.cli` is the entry point.

Concurrency model: three threads, each with one job.

- The *reading loop* (the main thread) pulls a reading, scores it, decides,
  acts and queues. It never touches the network, so a decision and its action
  never wait for the broker.
- The *link thread* waits on one event and, when woken or due, seals overdue
  batches, moves the outbox into the MQTT client, handles incoming messages
  and sends heartbeats. It sleeps while nothing is due (idle CPU is ~0).
- paho's *network thread* only keeps the connection and puts incoming
  messages on a bounded inbox.

Backpressure is explicit: the outbox, the inbox and paho's own queue are all
bounded, and everything dropped is counted and reported in the heartbeat.
"""

__all__: list[str] = []
