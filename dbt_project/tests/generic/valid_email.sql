{#
  Fails on every non-null value that is not a plain lower-case address (local@domain.tld).
  NULLs are left to `not_null`, so each problem is reported by exactly one test. Staging lowers
  and trims emails, so an upper-case address here means the cleaning step was bypassed.
#}
{% test valid_email(model, column_name) %}
select {{ column_name }} as invalid_email
from {{ model }}
where {{ column_name }} is not null
  and {{ activation.regex_mismatch(column_name, "^[a-z0-9._%+-]+@[a-z0-9-]+(\\.[a-z0-9-]+)*\\.[a-z]{2,}$") }}
{% endtest %}
