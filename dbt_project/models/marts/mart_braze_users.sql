-- One row per customer for Braze, with engagement from product events.
with activity as (
    select
        customer_id,
        count(case when event_type = 'login' then 1 end) as login_count,
        max(occurred_at) as last_event_at
    from {{ ref('stg_events') }}
    group by customer_id
)

select
    customers.customer_id as external_id,
    customers.email,
    customers.first_name,
    customers.country,
    cast(coalesce(activity.login_count, 0) as integer) as login_count,
    cast(activity.last_event_at as timestamp) as last_event_at
from {{ ref('stg_customers') }} as customers
left join activity
    on activity.customer_id = customers.customer_id
