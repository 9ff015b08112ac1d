"""Device states: the pure rules (:mod:`.states`) and the ingest worker's tracker
that applies them and records each change (:mod:`.tracker`)."""
