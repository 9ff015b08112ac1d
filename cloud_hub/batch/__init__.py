"""Batch inference: score recorded or stored readings with a registered model.

Where things are:

- ``registry``: which model package ``NAME[@VERSION]`` names (the hub's
  registry, and the packages under its models directory).
- ``scoring``: :class:`~cloud_hub.batch.scoring.BatchScorer`, readings (or the
  features the hub stored) to predicted class, urgent score and the urgent
  rule's verdict, per device or series, block by block.
- ``output``: result writers (CSV, JSON lines, Parquet with pyarrow).
- ``files``: ``edgeloop-hub batch score``: recordings in, a result file out,
  streamed in chunks.
- ``jobs``: batch jobs over stored telemetry for the API (``/v1/batch/jobs``),
  run one at a time by a thread of their own.
"""

from __future__ import annotations

from shared.errors import EdgeloopError

__all__ = ["BatchError"]


class BatchError(EdgeloopError):
    """A batch run that cannot go on as asked; the message says what to do."""
