"""The ingest agent: run directory files → tracking store, exactly once.

``records`` turns lines into batches (pure); ``ingest`` reads files, commits batches with their
offsets and retries when the database is away. The sidecar entrypoint lives here too.
"""
