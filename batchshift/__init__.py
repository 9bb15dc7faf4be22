"""batchshift: the CLI, the Python client and the demo, on top of config, scheduler and workers."""
