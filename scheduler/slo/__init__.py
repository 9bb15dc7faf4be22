"""The SLO tracker: lane health, the turnaround model (:mod:`.survival`), predictions, the last safe
moment (:mod:`.flip_plan`, pure) and flips, burn rates, lane state with hysteresis, alerting, and the
tick step that runs them (:mod:`.tracker`).

Imports planning, costs and the ledger below it; only :mod:`scheduler.service` and
:mod:`scheduler.intake` sit above it.
"""
