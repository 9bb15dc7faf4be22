"""The audit's errors, one tree; the CLI prints the message and exits with the usage status.

AuditError
├── UnreadableLog   a log that cannot be read or whose format cannot be told
└── InvalidRules    a rules file that is missing or does not validate
"""

from __future__ import annotations


class AuditError(Exception):
    """Raised when the audit cannot run on its inputs; the message names the file."""

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0])


class UnreadableLog(AuditError):
    """Raised when a log file is missing, malformed, or in no format the audit reads."""


class InvalidRules(AuditError):
    """Raised when the rules TOML is missing, malformed, or has an unknown key."""
