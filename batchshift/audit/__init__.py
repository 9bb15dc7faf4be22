"""The batch-eligibility audit: ``batchshift audit LOG...`` reads logs of today's synchronous LLM traffic
and reports, per feature (and per model and caller), what could move to batch or flex and what it would save.

:mod:`.formats` tells a log's format by its content and hands it to a reader (:mod:`.otlp`,
:mod:`.litellm`, :mod:`.jsonl`), each yielding :class:`~.calls.Call`; :mod:`.rules` reads the user's
tolerance rules; :mod:`.signals` weighs each feature's eligibility; :mod:`.costing` prices the traffic
with the pricing table; :mod:`.deadlines` runs the policy lab's simulator on each feature's traffic;
:mod:`.report` assembles the result and its JSON contract; :mod:`.terminal` and :mod:`.html_report`
render it.
"""
