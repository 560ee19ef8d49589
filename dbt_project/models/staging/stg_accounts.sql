-- One row per raw account: typed, trimmed, without Airbyte's meta columns.
select
    cast(account_id as {{ dbt.type_string() }}) as account_id,
    trim(cast(name as {{ dbt.type_string() }})) as account_name,
    lower(trim(cast(domain as {{ dbt.type_string() }}))) as domain,
    lower(trim(cast(industry as {{ dbt.type_string() }}))) as industry,
    cast(employee_count as integer) as employee_count,
    cast(created_at as timestamp) as created_at,
    cast(updated_at as timestamp) as updated_at
from {{ source('raw', 'accounts') }}
