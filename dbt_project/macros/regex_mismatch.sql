{# True when `expression` does not match `pattern` (anchored with ^ and $), per adapter. #}
{% macro regex_mismatch(expression, pattern) -%}
    {{ return(adapter.dispatch('regex_mismatch', 'activation')(expression, pattern)) }}
{%- endmacro %}

{% macro default__regex_mismatch(expression, pattern) -%}
    not regexp_matches({{ expression }}, '{{ pattern }}')
{%- endmacro %}

{% macro postgres__regex_mismatch(expression, pattern) -%}
    {{ expression }} !~ '{{ pattern }}'
{%- endmacro %}
