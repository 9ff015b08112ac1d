"""The cloud hub: ingest, heavy model, store, drift, registry, rollout, API, embedded broker."""
