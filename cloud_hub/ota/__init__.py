"""The hub's side of OTA: what each device should run (desired state), sent and re-sent.

:mod:`.desired` is pure (what a device's desired message is, whether a model
may be desired, when to send it again); :mod:`.publisher` keeps it in the store
and on the broker; :mod:`.rollout` (pure) and :mod:`.rollouts` (the manager
thread) run staged rollouts.
"""
