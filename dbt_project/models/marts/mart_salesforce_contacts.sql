-- One row per customer for Salesforce Contact, linked to its account.
select
    customer_id as contact_id,
    account_id,
    email,
    first_name,
    last_name,
    lifecycle_stage
from {{ ref('stg_customers') }}
