-- One row per raw subscription, typed; money stays in integer cents until the marts.
select
    cast(subscription_id as {{ dbt.type_string() }}) as subscription_id,
    cast(customer_id as {{ dbt.type_string() }}) as customer_id,
    lower(trim(cast(plan as {{ dbt.type_string() }}))) as plan,
    lower(trim(cast(status as {{ dbt.type_string() }}))) as status,
    cast(mrr_cents as integer) as mrr_cents,
    cast(started_at as timestamp) as started_at,
    cast(canceled_at as timestamp) as canceled_at
from {{ source('raw', 'subscriptions') }}
