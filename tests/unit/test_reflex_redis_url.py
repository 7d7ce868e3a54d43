"""Where Reflex keeps the pages' state: derived from REDIS_URL on the next database index,
with socket timeouts; REFLEX_REDIS_URL wins; neither set changes nothing."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import parse_url

from backend_core.errors import ConfigError
from rxapp.reflex_redis import reflex_redis_url


def test_nothing_set_keeps_reflexs_state_where_it_was() -> None:
    assert reflex_redis_url({}) is None
    assert reflex_redis_url({"REDIS_URL": " "}) is None


def test_state_kept_per_instance_by_choice_keeps_the_page_off_redis() -> None:
    for mode in ("memory", "disk"):
        assert reflex_redis_url({"REDIS_URL": "redis://h:6379/0", "REFLEX_STATE_MANAGER_MODE": mode}) is None
    explicit = reflex_redis_url({"REFLEX_REDIS_URL": "redis://h:6379/1", "REFLEX_STATE_MANAGER_MODE": "memory"})
    assert explicit is not None, "an explicit REFLEX_REDIS_URL is the operator's own choice"


@pytest.mark.parametrize(
    ("redis_url", "db"),
    [
        ("redis://127.0.0.1:6379", 1),
        ("redis://127.0.0.1:6379/0", 1),
        ("redis://127.0.0.1:6379/3", 4),
        ("redis://127.0.0.1:6379/0?db=5", 6),  # redis-py reads ?db= before the path
        ("unix:///run/redis.sock?db=2", 3),
    ],
)
def test_reflex_gets_the_database_after_ours_with_timeouts(redis_url: str, db: int) -> None:
    derived = reflex_redis_url({"REDIS_URL": redis_url})
    assert derived is not None
    assert derived.startswith(redis_url.split(":", 1)[0] + "://")  # Reflex checks the scheme
    parsed = parse_url(derived)  # what Reflex's client will be built with
    assert parsed["db"] == db
    assert parsed["socket_connect_timeout"] == 2.0
    assert parsed["socket_timeout"] == 10.0


def test_what_the_url_names_is_kept_and_the_password_travels() -> None:
    derived = reflex_redis_url({"REDIS_URL": "rediss://user:s3cret@redis.internal:6380/0?socket_timeout=4"})
    assert derived is not None
    parsed = parse_url(derived)
    assert (parsed["username"], parsed["password"], parsed["db"]) == ("user", "s3cret", 1)
    assert parsed["socket_timeout"] == 4.0 and parsed["socket_connect_timeout"] == 2.0


def test_reflex_redis_url_wins_as_given_with_timeouts_added() -> None:
    derived = reflex_redis_url({"REFLEX_REDIS_URL": "redis://other:6379/7", "REDIS_URL": "redis://h:6379/0"})
    assert derived is not None
    parsed = parse_url(derived)
    assert (parsed["host"], parsed["db"], parsed["socket_timeout"]) == ("other", 7, 10.0)
    # Idempotent: each worker process derives it again from what the first one set.
    assert reflex_redis_url({"REFLEX_REDIS_URL": derived}) == derived


@pytest.mark.parametrize(
    "bad",
    [
        "http://127.0.0.1:6379",
        "redis://127.0.0.1:port/0",
        "redis://:s3cret@127.0.0.1:6379/zero",
        "redis://127.0.0.1:6379/0?socket_timeout=0",
        "redis://127.0.0.1:6379/0?socket_connect_timeout=soon",
    ],
)
def test_a_bad_url_is_one_line_naming_the_variable_without_the_password(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        reflex_redis_url({"REDIS_URL": bad})
    assert caught.value.variable == "REDIS_URL"
    assert "s3cret" not in str(caught.value)
