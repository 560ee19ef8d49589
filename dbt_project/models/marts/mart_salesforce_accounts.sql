-- One row per account for Salesforce Account. A customer is active while any of their
-- subscriptions is active or trialing; MRR counts only subscriptions in status active (a trial
-- pays nothing yet, and past-due revenue is not counted until it is collected).
with customer_subscriptions as (
    select
        customer_id,
        {{ dbt.bool_or("status in ('active', 'trialing')") }} as is_active,
        sum(case when status = 'active' then mrr_cents else 0 end) as active_mrr_cents
    from {{ ref('stg_subscriptions') }}
    group by customer_id
),

per_account as (
    select
        customers.account_id,
        count(case when customer_subscriptions.is_active then 1 end) as active_customer_count,
        coalesce(sum(customer_subscriptions.active_mrr_cents), 0) as active_mrr_cents
    from {{ ref('stg_customers') }} as customers
    left join customer_subscriptions
        on customer_subscriptions.customer_id = customers.customer_id
    group by customers.account_id
)

select
    accounts.account_id,
    accounts.account_name,
    accounts.domain,
    accounts.industry,
    cast(accounts.employee_count as integer) as employee_count,
    cast(coalesce(per_account.active_customer_count, 0) as integer) as active_customer_count,
    cast(
        cast(coalesce(per_account.active_mrr_cents, 0) as decimal(18, 2)) / 100
        as decimal(12, 2)
    ) as total_mrr_usd
from {{ ref('stg_accounts') }} as accounts
left join per_account
    on per_account.account_id = accounts.account_id
