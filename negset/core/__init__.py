"""Shared pieces under every step: atomic writes, the project layout, parameters, errors, the lock,
image decoding, Parquet reading, progress, similarity kernels, the sha256-keyed part cache, the DuckDB catalog."""
