"""activation: a Dagster code location that makes reverse-ETL safe."""

from activation import dbt_out_of_process

# First, so no module of the package can import dagster-dbt before it: see the module.
dbt_out_of_process.install()
