"""What goes where and when: lanes, flush planning (:mod:`.planner`, pure), cron, batch records, and the
dispatch of sync calls and webhook deliveries to workers.

Imports the ledger and costs below it, never the SLO tracker.
"""
