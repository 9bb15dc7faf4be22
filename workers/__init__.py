"""I/O with the outside world: provider batch and sync APIs, webhooks and alerts.

Nothing here decides what to do; the scheduler decides and hands work over by arq task name. Every
call that leaves the process goes through :mod:`workers.http`, and every failure surfaces as a
:class:`workers.errors.WorkerError`.

It may import ``config`` and ``scheduler``, never ``api``, ``batchshift`` or ``emulator``.
"""
