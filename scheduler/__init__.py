"""The decisions: the job ledger, intake API, lanes, flush planning, SLO tracking and cost accounting.

Nothing here talks to providers or webhook receivers; work for the outside world is handed to
``workers`` by arq task name through Redis.
"""
