"""Tests of the hub's ingest: link, worker, store and heavy model, on real brokers."""
