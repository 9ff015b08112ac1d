"""Where readings enter the agent: simulated machine, CSV replay, stdin, plug-ins."""

from edge_agent.sources.base import Reading, Source

__all__ = ["Reading", "Source"]
