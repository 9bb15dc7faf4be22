"""What each batch and sync task returns: one ``StrEnum`` per task, a member per way a run can end.

A task's return value is its arq result (msgpack stores a member as its plain string value) and the
``outcome`` of its ``task.finished`` summary event (:mod:`workers.summary`). The details a bare
member leaves out (the state a skipped record was in, the holder of a lease) go into that event.
Counting tasks (ingestion, reconciliation, webhook and alert delivery) return their counts instead.
"""

from __future__ import annotations

from enum import StrEnum


class SubmitOutcome(StrEnum):
    """How one ``submit_batch`` run ended."""

    SUBMITTED = "submitted"  # the provider batch was created and its id recorded
    ADOPTED = "adopted"  # an earlier run's provider batch was found, verified ours, and recorded
    DUPLICATE = "duplicate"  # another run recorded a different provider batch first: this one is a duplicate
    CLAIMED = "claimed"  # the provider batch is already recorded on another of our batches
    EMPTY = "empty"  # every job left the batch before it was sent: cancelled, nothing created
    REFUSED = "refused"  # the provider refused the batch: its jobs went back to the lane or on to sync
    LINE_REFUSED = "line_refused"  # one line cannot be sent: that job failed, the rest went back
    GAVE_UP = "gave_up"  # out of tries: reconciliation takes over
    UNKNOWN = "unknown"  # the create call's outcome is unknown: left planned for reconciliation
    UNVERIFIED = "unverified"  # a candidate provider batch cannot be read yet: reconciliation decides
    LEASE_LOST = "lease_lost"  # the submission lease passed to another holder before the create call
    LEASED = "leased"  # another holder has the lease: nothing done
    NO_ADAPTER = "no_adapter"  # the batch's provider is not configured on this worker
    SKIPPED = "skipped"  # the batch is no longer planned
    MISSING = "missing"  # no such batch


class PollOutcome(StrEnum):
    """How one ``poll_batch`` run ended."""

    RUNNING = "running"  # still in flight: the next poll is scheduled
    ENDED = "ended"  # ended at the provider: handed to ingestion
    REFUSED = "refused"  # failed at the provider: its jobs went back to the lane or on to sync
    ABANDONED = "abandoned"  # lost by the provider or past its window: its jobs went back
    POLL_FAILED = "poll_failed"  # the provider could not be asked: polled again later
    NO_ADAPTER = "no_adapter"  # the batch's provider is not configured on this worker
    SKIPPED = "skipped"  # the batch is not in flight (any more)
    MISSING = "missing"  # no such batch: taken out of the poll schedule


class CancelOutcome(StrEnum):
    """How one ``cancel_batch`` run ended."""

    REQUESTED = "requested"  # the provider was asked to cancel; polling sees the batch end
    NO_ADAPTER = "no_adapter"  # the batch's provider is not configured on this worker
    SKIPPED = "skipped"  # the batch is not in flight (any more)
    MISSING = "missing"  # no such batch


class SyncOutcome(StrEnum):
    """How one ``run_sync`` run ended."""

    SUCCEEDED = "succeeded"  # answered: the job succeeded
    FAILED = "failed"  # failed for good (a permanent error, out of attempts, or past its deadline)
    DEFERRED = "deferred"  # handed back to the dispatch for a while (limits, or a retriable failure)
    SUPERSEDED = "superseded"  # a newer dispatch of the job exists: nothing done
    SKIPPED = "skipped"  # the job is no longer in the sync lane (or left it while this run worked)
    MISSING = "missing"  # no such job
