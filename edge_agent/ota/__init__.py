"""Over-the-air model updates on the agent (issue 10).

:mod:`edge_agent.ota.machine` is the update state machine, pure (events in,
effects out); :mod:`edge_agent.ota.checks` holds its decisions (compatibility,
smoke test, trial). The I/O around it: :mod:`edge_agent.ota.download` fetches a
package over HTTP into a staging directory, :mod:`edge_agent.ota.slots` keeps
the models and the machine's files on disk, and :mod:`edge_agent.ota.runner`
runs the machine inside the agent (its reading loop and one worker thread).
Nothing here is imported until the agent enables OTA.
"""

__all__: list[str] = []
