"""activation: a Dagster code location that makes reverse-ETL safe."""
