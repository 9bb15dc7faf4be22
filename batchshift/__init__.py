"""batchshift: the CLI, the Python client, the demo and the policy lab (``batchshift simulate``).

The top entry point: it starts the processes (api, scheduler, worker, emulator) and may import
every other package; nothing imports it.
"""
