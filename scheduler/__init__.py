"""The decisions: the job ledger and intake rules, lanes, flush planning, SLO tracking and cost accounting.

Nothing here talks to providers or webhook receivers; work for the outside world is handed to
``workers`` by arq task name through Redis. It may import ``config`` only, never ``workers``,
``api``, ``batchshift`` or ``emulator``; its errors are the tree in :mod:`scheduler.errors`.

Layers, bottom up (an import-linter contract in pyproject.toml holds them):

- :mod:`scheduler.ledger`: Redis keys, Lua, job state changes, task names, leadership.
- :mod:`scheduler.costs`: pricing, token estimates, budgets, cost reports, metrics.
- :mod:`scheduler.planning`: lanes, the flush planner, cron, batch records, dispatch to workers.
- :mod:`scheduler.slo`: lane health, the turnaround model, last safe moments, flips, alerting.
- :mod:`scheduler.service` (the tick, assembled by ``build_scheduler``) and :mod:`scheduler.intake`.

Beside them, importable from any layer: :mod:`scheduler.policy` (every routing and backoff
decision, pure), :mod:`scheduler.tick` (what a tick step is) and :mod:`scheduler.errors`.
"""
