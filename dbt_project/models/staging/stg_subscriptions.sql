-- One row per raw subscription, typed; money stays in integer cents until the marts.
select
    cast(subscription_id as varchar) as subscription_id,
    cast(customer_id as varchar) as customer_id,
    lower(trim(cast(plan as varchar))) as plan,
    lower(trim(cast(status as varchar))) as status,
    cast(mrr_cents as integer) as mrr_cents,
    cast(started_at as timestamp) as started_at,
    cast(canceled_at as timestamp) as canceled_at
from {{ source('raw', 'subscriptions') }}
