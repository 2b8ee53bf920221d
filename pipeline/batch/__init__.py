"""Batch mode: the same job through the Message Batches API, at batch prices, resumable from cron.

Module map (import the modules; this package imports nothing, so ``pipeline --help`` stays fast):

- ``state``: what was submitted, persisted in ``OUTPUT/.batches`` before anything else can fail
  (the event log, the rows files, the custom_id mapping).
- ``api``: the batch endpoints over HTTP (create, retrieve, list, cancel, the results stream).
- ``submit``: rows to batch items, split by count and measured size, spooled to disk and sent.
- ``collect``: a finished batch's results, streamed line by line into the output.
- ``run``: one invocation end to end: orphans, collection, submission, waiting; cancel.
- ``manage``: status, ``batch forget``, and where an output's batches went, without the job.
- ``report``: the batch summary text.
"""
