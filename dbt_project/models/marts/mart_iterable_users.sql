-- One row per customer for Iterable, with the state of their latest subscription (by start
-- time). Customers without a subscription are on the free plan. mrr_usd is the latest
-- subscription's MRR while it is active, else 0 (as in mart_salesforce_accounts.total_mrr_usd).
with ranked_subscriptions as (
    select
        customer_id,
        plan,
        status,
        mrr_cents,
        row_number() over (
            partition by customer_id order by started_at desc, subscription_id desc
        ) as recency
    from {{ ref('stg_subscriptions') }}
),

latest_subscription as (
    select customer_id, plan, status, mrr_cents
    from ranked_subscriptions
    where recency = 1
)

select
    customers.customer_id as user_id,
    customers.email,
    coalesce(latest_subscription.plan, 'free') as plan,
    coalesce(latest_subscription.status, 'active') as subscription_status,
    cast(
        cast(
            case when latest_subscription.status = 'active' then latest_subscription.mrr_cents
            else 0 end
            as decimal(18, 2)
        ) / 100
        as decimal(12, 2)
    ) as mrr_usd,
    cast(customers.created_at as date) as signup_date
from {{ ref('stg_customers') }} as customers
left join latest_subscription
    on latest_subscription.customer_id = customers.customer_id
