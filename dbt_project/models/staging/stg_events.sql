-- One row per raw product event, typed.
select
    cast(event_id as varchar) as event_id,
    cast(customer_id as varchar) as customer_id,
    lower(trim(cast(event_type as varchar))) as event_type,
    cast(occurred_at as timestamp) as occurred_at
from {{ source('raw', 'events') }}
