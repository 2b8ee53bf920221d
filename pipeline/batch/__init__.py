"""The batch driver: the same job through the Message Batches API, at batch prices, resumable from cron.

It shares the preparation walk with the realtime driver and owns what only batches need: the
submission log in ``OUTPUT/.batches``, splitting, collection and orphan adoption. Modules:

- ``options``: what an invocation is given and what it ends with.
- ``state``: what was submitted, persisted in ``OUTPUT/.batches`` before anything else can fail
  (the event log, the rows files, the custom_id mapping).
- ``submit``: rows to batch items, split by count and measured size, spooled to disk and sent.
- ``collect``: a finished batch's results, streamed line by line into the output.
- ``run``: one invocation end to end: orphans, collection, submission, waiting; cancel.
- ``manage``: status, ``batch forget``, and where an output's batches went, without the job.
- ``summary``: the batch summary text.

The endpoints themselves are :mod:`pipeline.api.batches`.
"""
