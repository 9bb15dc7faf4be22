"""Client batches: the OpenAI- and Anthropic-compatible batch endpoints' model.

A client's batch (an uploaded JSONL file, or Anthropic's inline requests) becomes one job per line,
routed to its lane by its model like any job, and a client batch record that links to them. The
record's counters move in the same Lua step that ends each job, so its status and counts are one
read; its output is streamed from the jobs' stored results. ``files`` holds uploads, ``lines``
turns lines into jobs, ``batches`` the record and its views, ``outputs`` the result files.
"""
