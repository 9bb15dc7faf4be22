"""The arq tasks, one module per family (batches, ingest, sync); registered in :mod:`workers.worker`."""
