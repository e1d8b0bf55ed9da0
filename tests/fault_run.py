"""``python -m tests.fault_run run``: cdcflow's command line with a fault installed for the
crash tests: the ingest worker exits the process (code :data:`EXIT_CODE`) between a
batch's serving commit and the confirmation of its position to the source."""

from __future__ import annotations

import os

#: The exit code of the fault, which the test waits for.
EXIT_CODE = 17


def _die(_position: int) -> None:
    os._exit(EXIT_CODE)


if __name__ == "__main__":
    import cdcflow

    cdcflow.catch_early_signals()  # before the imports, as in cdcflow.__main__
    from cdcflow.cli import main
    from cdcflow.runtime import Hooks

    raise SystemExit(main(hooks=Hooks(before_confirm=_die)))
