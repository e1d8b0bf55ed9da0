"""cdcflow: lightweight change-data-capture into a serving PostgreSQL with DuckDB projections."""

__version__ = "0.1.0"
