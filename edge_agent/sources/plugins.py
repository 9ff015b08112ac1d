"""Real sensor drivers, installed as plug-ins.

A driver package declares an entry point in the group ``edgeloop.sources``::

    [project.entry-points."edgeloop.sources"]
    my-adc = "my_driver:make_source"

``make_source(settings, sensors)`` receives the agent's settings and the
sensors the model reads (a tuple of :class:`shared.features.SensorSpec`: name,
unit, valid range, fallback), and returns an object with ``invalid: dict[str,
int]`` and ``readings(stop) -> Iterator[Reading]`` whose values are in that
sensor order (see :class:`edge_agent.sources.base.Source`). A driver whose
``make_source`` takes only ``settings`` is called with that alone. Run it with
``edgeloop-agent --source plugin --plugin my-adc``.
"""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, cast

from shared.errors import ConfigError

if TYPE_CHECKING:
    from edge_agent.settings import AgentSettings
    from edge_agent.sources.base import Source
    from shared.features import SensorSpec

__all__ = ["GROUP", "load_plugin"]

GROUP = "edgeloop.sources"


def load_plugin(name: str, settings: AgentSettings, sensors: tuple[SensorSpec, ...]) -> Source:
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    if name not in found:
        known = ", ".join(sorted(found)) or "none installed"
        raise ConfigError(
            f"no sensor driver {name!r} in entry point group {GROUP!r} (installed: {known}); "
            "install the driver package or fix --plugin",
            setting="plugin",
        )
    try:
        factory = found[name].load()
        try:
            takes_sensors = len(inspect.signature(factory).parameters) >= 2
        except (TypeError, ValueError):  # a callable without a signature
            takes_sensors = False
        source = factory(settings, sensors) if takes_sensors else factory(settings)
    except Exception as exc:  # a broken plug-in must not look like an agent bug
        raise ConfigError(
            f"sensor driver {name!r} failed to start: {exc!r}", setting="plugin"
        ) from exc
    if not hasattr(source, "readings"):
        raise ConfigError(
            f"sensor driver {name!r} returned {type(source).__name__}, which has no readings()",
            setting="plugin",
        )
    return cast("Source", source)
