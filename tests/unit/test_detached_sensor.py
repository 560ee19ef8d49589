"""The detached-sync sensor's request budget and cursor (pure)."""

from __future__ import annotations

import json

import pytest

from activation.defs.triggers.detached_syncs import (
    DETACHED_SENSOR_INTERVAL_SECONDS,
    load_cursor,
    request_budget,
)


def test_the_budget_is_the_followed_destinations_shares_over_one_interval() -> None:
    # 200 requests per 10 s shared by 5 destinations: 4/s each.
    assert request_budget(4.0, 1) == (4 * DETACHED_SENSOR_INTERVAL_SECONDS, 4.0)
    assert request_budget(4.0, 5) == (20 * DETACHED_SENSOR_INTERVAL_SECONDS, 20.0)
    # 200 destinations: 0.1/s each; one followed destination still gets one read per tick.
    assert request_budget(0.1, 1) == (1, 0.1)
    assert request_budget(0.0, 3) == (None, 0.0)  # no limit set: none here either


def test_the_cursor_round_trips_and_a_broken_one_is_an_error() -> None:
    assert load_cursor(None) == ({}, {})
    cursor = json.dumps({"checked": {"7": 1.5}, "after": {"braze_users": 42}})
    assert load_cursor(cursor) == ({"7": 1.5}, {"braze_users": 42})
    assert load_cursor(json.dumps({"checked": {}})) == ({}, {})
    with pytest.raises(ValueError, match="detached_sync_sensor cursor"):
        load_cursor("[1, 2]")
