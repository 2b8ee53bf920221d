"""The cluster engine: a realtime run on the workers of a Ray cluster, one rate limit shared by them all.

A driver beside ``realtime`` and ``batch``, over the same preparation path, client, journal and
output: the same job file gives the same request per row and the same ``results.parquet``, and a job
may switch engines between runs and resume. Needs the ``ray`` extra; nothing here imports Ray at
module level, so that the engine can set up a loopback-only local instance before Ray is imported.
Module map:

- ``session``: connect to a cluster, or start a local Ray instance for the run and stop it after.
- ``source``: the job's input as a Ray Data source; read tasks use ``rows.reader`` and drop settled rows.
- ``limiter``: the one limiter actor, and the stand-ins through which every worker's client is admitted.
- ``registry``: the run's memory across workers: rows answered (a retried batch resends nothing) and
  identical requests in flight (sent once).
- ``output``: where a sender journals: a directory every node reaches, or object storage (segments
  each sender uploads, folded by the driver).
- ``sender``: the senders (an async actor pool): prepare each row where it is read, send, journal;
  where a worker finds the API key (its own environment).
- ``sizing``: how many senders, and each one's CPUs, threads and share of the job's concurrency.
- ``engine``: the driver: ``run_on_ray``, progress, signals, compaction, the summary.
- ``dataset``: ``process_dataset`` for teams that already hold a ``ray.data.Dataset``.
"""
