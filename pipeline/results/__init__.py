"""Stage 5: results become ``results.parquet``. The journal, compaction, the output store and its
lock, the output schema, the run summary and the live progress.
"""
