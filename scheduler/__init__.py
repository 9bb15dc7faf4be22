"""The decisions: the job ledger and intake rules, lanes, flush planning, SLO tracking and cost accounting.

Nothing here talks to providers or webhook receivers; work for the outside world is handed to
``workers`` by arq task name through Redis. It may import ``config`` only, never ``workers``,
``api``, ``batchshift`` or ``emulator``; its errors are the tree in :mod:`scheduler.errors`.
"""
