"""Over-the-air model updates on the agent (issue 10).

Built: the pure parts. :mod:`edge_agent.ota.machine` is the update state
machine (events in, effects out); :mod:`edge_agent.ota.checks` holds its
decisions (compatibility, smoke test, trial). :mod:`edge_agent.ota.download`
fetches a package over HTTP into a staging directory (the I/O edge). Not yet:
the agent does not run the machine nor download (no wiring into
:mod:`edge_agent.agent`, no model slots on disk).
"""

__all__: list[str] = []
