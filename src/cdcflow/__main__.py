import cdcflow

cdcflow.catch_early_signals()

from cdcflow.cli import main  # noqa: E402  (after the handlers: imports take a moment)

raise SystemExit(main())
