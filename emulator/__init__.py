"""A provider emulator: OpenAI's, Anthropic's and Gemini's batch and sync wire formats, in memory, with faults.

A product of its own, which users run for a keyless trial (``batchshift emulator``): it imports
nothing of ``config``, ``scheduler``, ``workers``, ``api`` or ``batchshift``, only third-party
libraries, so it can be read, run and changed apart from the service it stands in front of.

The official ``openai``, ``anthropic`` and ``google-genai`` (at ``api_version="v1beta"``) SDKs
cannot tell it from the real thing for the calls batchshift makes. Azure OpenAI's routes
(:mod:`emulator.azure_routes`: ``/openai/...`` with ``api-version``, ``/openai/v1/...``, an
``api-key`` header) serve the same OpenAI batch state, so the ``openai`` SDK's ``AzureOpenAI``
client works against it too. Build the ASGI app with :func:`emulator.app.create_app`; run it with
:func:`emulator.server.serve` (CLI) or :func:`emulator.server.running_emulator`
(tests, benchmarks, demo). Batch state is computed from time (:mod:`emulator.state`);
outputs and usage are deterministic (:mod:`emulator.outputs`; :mod:`emulator.prompt_cache` states the
prompt-caching rule).

Settings (flags at start, ``POST /_emulator/config`` at run time: a JSON object whose top-level
keys replace the current ones; ``GET`` shows them; ``POST /_emulator/reset`` clears all state and
returns to the start settings and the wall clock; ``GET /_emulator/requests`` lists the calls received;
``POST /_emulator/clock`` with ``{"now": epoch_seconds}`` holds the emulator's clock there, and
``{"now": null}`` returns to the wall clock)::

    turnaround_s       2.0   seconds from submission to a batch's end; a number or {model: s, "*": s}
    stall              []    models whose batches make no progress while listed ("*": all); lifting
                             a stall shifts the batch's clock by the time it stood still
    expire             {}    {model or "*": fraction_done}: that model's batches expire at the end of
                             their turnaround with that share of requests done
    line_error_rate    0.0   share of batch lines that fail (a stable draw from the custom_id's hash);
                             a number or {model: rate}
    line_error_status  400   the status of those lines (400 fails for good; 429, 500, 529 retriable)
    sync_latency_s     0.0   added latency of sync calls; a number or {model: s}
    flex_latency_s     0.0   further latency of service_tier="flex" sync calls; a number or {model: s}
    hold_sync          false true, or a list of models: their sync calls are received (and listed in
                             requests) but not answered until the setting no longer names them
    rate_limit         {}    {endpoint pattern: rate}: answer 429 with retry-after
    overload           {}    {endpoint pattern: rate}: answer 529 (503 "overloaded" on OpenAI paths)
    server_error       {}    {endpoint pattern: rate}: answer 500
    fail_next          {}    {endpoint pattern: [status, ...]}: the next calls matching answer these
                             statuses, in order, then the pattern is spent (deterministic faults)
    retry_after_s      1.0   the retry-after sent with injected 429/503/529 answers
    invalid_file       false true, or a list of models: OpenAI batches fail validation (errors.data),
                             Gemini batches end FAILED
    token_limit_exceeded false  true, or a list of models (Azure: deployments): OpenAI and Azure batch
                             creates fail fast, ``failed`` with ``token_limit_exceeded`` in errors.data
                             (the enqueued-token quota is full)
    flex_unavailable   0.0   share of service_tier="flex" sync calls answered 429 "resource unavailable"
    cancel_s           0.2   seconds a batch stays cancelling/canceling after a cancel
    seed               0     seed of the draws behind the rate-based faults
    cache_window       8     OpenAI batch lines a prompt prefix stays warm for, in input order
                             (:mod:`emulator.prompt_cache`; 0: no cache hits inside batches)
    webhook_url        null  where OpenAI batch events (batch.completed, .failed, .expired,
                             .cancelled) are posted when a batch created meanwhile ends
                             (:mod:`emulator.events`); null sends none
    webhook_secret     null  the whsec_<base64> secret signing them (Standard Webhooks)

The faults apply to Gemini's routes (:mod:`emulator.gemini_batch`) as to the others; ``expire``
there ends a batch ``EXPIRED`` with no output, and any Gemini batch still pending or running 48 h
after its creation expires so (a stall held that long included).

Endpoint patterns are fnmatch patterns on the path, optionally preceded by a method:
``"/v1/chat/completions"``, ``"POST /v1/messages/batches"``, ``"GET /v1/batches/*"``, ``"*"``.
Draws for rates come from one seeded generator, so a given sequence of calls is reproducible.
"""
