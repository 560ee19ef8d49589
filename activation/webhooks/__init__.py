"""The webhook intake: signed "data landed" signals become one Dagster run each.

`signatures` verifies the two signing schemes, `store` records accepted events durably (SQLite),
`intake` is the HTTP service (`activation webhooks --port N`), `sensor` launches the runs.
"""
