"""cdcflow benchmarks (run as scripts, or imported by ``cdcflow bench``)."""
