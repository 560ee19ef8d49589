{#
  Use a model's custom schema as-is (`marts`, not `main_marts`): the Hightouch syncs and the
  destinations declaration name tables as `marts.<model>`, whatever the target's default schema.
#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
