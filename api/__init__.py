"""The HTTP API: the app factory, authentication, error mapping and the routers.

An entry point: producers enqueue, read and cancel jobs here; the API validates, asks
``scheduler`` (intake, ledger, costs, lanes) and answers. It may import ``config``, ``scheduler``
and ``workers``, never ``batchshift`` or ``emulator``.
"""
