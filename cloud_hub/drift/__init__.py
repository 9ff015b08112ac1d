"""Drift in the hub: each device's drift state per model version, and the fleet's.

- :mod:`.states` — pure: the device state machine (ok / drifting / recovered) and
  the fleet rule;
- :mod:`.monitor` — counts each stored reading against its model's reference
  statistics, runs the detectors (:mod:`shared.drift`), stores states, events
  and closed windows, raises fleet alarms;
- :mod:`.background` — runs the monitor on its own thread, fed by the ingest worker.
"""
