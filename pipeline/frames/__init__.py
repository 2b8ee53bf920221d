"""The Python API: a job built in Python, a table in, a DataFrame of results out.

``pipeline.Job`` takes the job file's keys as keywords (one schema with the TOML path:
``job.spec.JobSpec``) and runs through the same drivers as ``pipeline run``; ``pipeline.sandbox()``
(``pipeline.sandbox.block``) serves the sandbox for a ``with`` block. Module map:

- ``job``: ``Job``: building, ``run`` / ``run_async``, ``estimate``, ``validate``.
- ``drive``: the server and key, and handing a run to the CLI's drivers (its summary, its errors).
- ``outputs``: where a run keeps its results (``output=``, the job file's, or a per-user cache) and
  reading them back in the input's row order.
- ``calling``: running a coroutine whether or not the caller's thread already runs an event loop
  (Jupyter does), with Ctrl-C (the kernel's interrupt) forwarded as the CLI's graceful stop.
- ``display``: progress as a live notebook output, or the CLI's plain lines in a script.
"""
