-- Marketing contacts for HubSpot: only customers who opted in to marketing email, so a withdrawn
-- consent removes the contact from the sync's results.
select
    customer_id as contact_id,
    email,
    first_name,
    last_name,
    lifecycle_stage,
    country
from {{ ref('stg_customers') }}
where marketing_opt_in
