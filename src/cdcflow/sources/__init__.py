"""Sources: one module per engine behind the protocol in :mod:`cdcflow.sources.base`."""
