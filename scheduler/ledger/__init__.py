"""The job ledger in Redis: what is true about every job, batch and lease, and the only code that changes it.

Owns the key names (:mod:`.keys`), the Lua scripts and their one loader (:mod:`.scripts`, ``lua/``),
connections (:mod:`.store`), Redis's clock (:mod:`.clock`), ids, the job model (:mod:`.jobs`), every
job state change (:mod:`.ledger`), arq task names (:mod:`.tasks`), leadership and its fencing
(:mod:`.leader`), heartbeats, and retention. The bottom layer of the scheduler: it imports
``config`` and :mod:`scheduler.errors` / :mod:`scheduler.tick` only.
"""
