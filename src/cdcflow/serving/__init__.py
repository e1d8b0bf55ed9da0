"""The serving database: control tables, staging writes, atomic commits."""
