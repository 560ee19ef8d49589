-- One row per raw customer row. Deliberately NOT deduplicated: a duplicate customer_id from the
-- source must fail the unique test here, not be silently resolved and synced to a CRM.
select
    cast(customer_id as {{ dbt.type_string() }}) as customer_id,
    cast(account_id as {{ dbt.type_string() }}) as account_id,
    lower(trim(cast(email as {{ dbt.type_string() }}))) as email,
    trim(cast(first_name as {{ dbt.type_string() }})) as first_name,
    trim(cast(last_name as {{ dbt.type_string() }})) as last_name,
    upper(trim(cast(country as {{ dbt.type_string() }}))) as country,
    lower(trim(cast(lifecycle_stage as {{ dbt.type_string() }}))) as lifecycle_stage,
    cast(marketing_opt_in as boolean) as marketing_opt_in,
    cast(created_at as timestamp) as created_at,
    cast(updated_at as timestamp) as updated_at
from {{ source('raw', 'customers') }}
