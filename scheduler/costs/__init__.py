"""What jobs cost: the pricing table, token estimates, budgets and their admission, cost reports, metrics.

Imports the ledger below it (keys, jobs), never planning or the SLO tracker.
"""
