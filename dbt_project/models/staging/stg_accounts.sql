-- One row per raw account: typed, trimmed, without Airbyte's meta columns.
select
    cast(account_id as varchar) as account_id,
    trim(cast(name as varchar)) as account_name,
    lower(trim(cast(domain as varchar))) as domain,
    lower(trim(cast(industry as varchar))) as industry,
    cast(employee_count as integer) as employee_count,
    cast(created_at as timestamp) as created_at,
    cast(updated_at as timestamp) as updated_at
from {{ source('raw', 'accounts') }}
