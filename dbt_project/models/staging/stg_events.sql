-- One row per raw product event, typed.
select
    cast(event_id as {{ dbt.type_string() }}) as event_id,
    cast(customer_id as {{ dbt.type_string() }}) as customer_id,
    lower(trim(cast(event_type as {{ dbt.type_string() }}))) as event_type,
    cast(occurred_at as timestamp) as occurred_at
from {{ source('raw', 'events') }}
