"""One exception root for cdcflow.

Transient vs terminal is a type, not a string match: workers retry a
``TransientError`` with backoff, and stop the affected capture or the process on a
``TerminalError``. The class docstring is the default message.
"""

from __future__ import annotations


class CdcflowError(Exception):
    """cdcflow failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class TransientError(CdcflowError):
    """A temporary failure (connection lost, server restarting); retried with backoff."""


class TerminalError(CdcflowError):
    """A failure that retrying will not fix; it needs an operator."""


class ConfigError(TerminalError):
    """A configuration variable has a bad value."""


class SourceConfigError(TerminalError):
    """The source database is not set up for change capture."""


class SchemaDriftError(TerminalError):
    """A captured table no longer matches its staging table."""


class GapError(TerminalError):
    """The source no longer holds changes after our watermark."""

    def __init__(self, message: str, gap_from: int, gap_to: int | None) -> None:
        super().__init__(message)
        self.gap_from = gap_from
        self.gap_to = gap_to


class DefinitionError(TerminalError):
    """A projection definition cannot be used as written."""


class UncarriedValue(TerminalError):
    """A source value has no form in the incremental engine's types."""
