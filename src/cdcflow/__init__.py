"""cdcflow: lightweight change-data-capture into a serving PostgreSQL with DuckDB projections."""

__version__ = "0.1.0"

#: Signals received before the runtime installed its handlers (see cdcflow.runtime).
EARLY_SIGNALS: list[int] = []


def catch_early_signals() -> None:
    """Remember SIGTERM/SIGINT that arrive during start-up instead of dying mid-import, and
    make SIGQUIT print every thread's stack to stderr (the process goes on): what a stuck
    process is doing, without a debugger."""
    import faulthandler
    import signal

    faulthandler.register(signal.SIGQUIT, all_threads=True, chain=False)

    def handler(signum: int, _frame: object) -> None:
        EARLY_SIGNALS.append(signum)

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, handler)
