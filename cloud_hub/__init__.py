"""The cloud hub: embedded broker, ingest, heavy model, store, model build and registry, API.

Coming (not built yet): drift tracking, retraining, signed OTA rollouts.
"""
