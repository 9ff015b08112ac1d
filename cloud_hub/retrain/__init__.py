"""The retraining pipeline as the hub runs it: recorded runs over stored telemetry.

Where things are, in data-flow order:

- ``runs`` (pure): a run's record: trigger, inputs, options, steps, gates,
  metrics, decision;
- ``dataset`` (pure): stored readings -> teacher and operator labels, a time
  split per device with a held-out slice;
- ``job``: one run's steps, in a process of its own (assemble, train, convert,
  quantize, gate, register, canary), reusing :mod:`cloud_hub.pipeline`;
- ``runner``: :class:`~cloud_hub.retrain.runner.PipelineRunner`: checks and
  records requests (admin, schedule, drift), one run per model at a time,
  starts and watches each run's process, fails what a stopped hub left running.

Importing this package loads nothing heavy; scikit-learn and onnxruntime load
in the run's process.
"""
