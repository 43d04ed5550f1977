"""Settings: names, parsing, validation and secrecy."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.durations import format_duration, parse_duration
from bot.settings import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def load(**env: str) -> Settings:
    return load_settings(_env_file=None, **{k.lower(): v for k, v in env.items()})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("1h", 3600), ("1h30m", 5400), ("45", 45), (" 2M ", 120), ("0.5h", 1800)],
)
def test_durations_accept_units_and_plain_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10x", "-5", "1h-", "m10", "inf", "nan"])
def test_bad_durations_are_rejected_with_a_readable_message(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|finite"):
        parse_duration(text)


def test_format_duration() -> None:
    assert format_duration(42) == "42s"
    assert format_duration(3725) == "1h02m05s"
    assert format_duration(61) == "1m01s"


def test_defaults() -> None:
    s = load()
    assert s.vast_api_url == "https://console.vast.ai"
    assert s.vast_backend == "vast"
    assert s.excluded_countries == ["CN", "UA"]
    assert s.database_path == Path("data/vastops.db")
    assert s.poll_interval == 15


def test_environment_names_are_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXCLUDED_COUNTRIES", "cn, ua ,HK")
    monkeypatch.setenv("POLL_INTERVAL", "1m")
    monkeypatch.setenv("VAST_BACKEND", "sim")
    monkeypatch.setenv("DISCORD_GUILD_ID", "1234")
    monkeypatch.setenv("PROVISION_SCRIPT_SHA256", "A" * 64)
    s = load_settings(_env_file=None)
    assert s.excluded_countries == ["CN", "UA", "HK"]
    assert s.poll_interval == 60
    assert s.is_sim
    assert s.discord_guild_id == 1234
    assert s.provision_script_sha256 == "a" * 64


def test_every_invalid_value_is_listed_at_once_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as info:
        load(POLL_INTERVAL="soon", EXCLUDED_COUNTRIES="CN,China", PROVISION_SCRIPT_SHA256="nothex-secretish",
             VAST_BACKEND="aws", MAX_PRICE_PER_HOUR="-1")
    text = "\n".join(info.value.problems)
    for name in ("POLL_INTERVAL", "EXCLUDED_COUNTRIES", "PROVISION_SCRIPT_SHA256", "VAST_BACKEND",
                 "MAX_PRICE_PER_HOUR"):
        assert name in text
    assert "nothex-secretish" not in text


def test_poll_interval_floor() -> None:
    with pytest.raises(ConfigError, match="POLL_INTERVAL"):
        load(POLL_INTERVAL="0.2")


def test_secrets_are_never_printed() -> None:
    s = load(DISCORD_TOKEN="discord-token-value-123", VAST_API_KEY="vast-key-value-456")
    assert "discord-token-value-123" not in repr(s)
    assert "vast-key-value-456" not in str(s.model_dump())
    assert s.secret_values() == {"DISCORD_TOKEN": "discord-token-value-123", "VAST_API_KEY": "vast-key-value-456"}


def test_missing_settings_for_check_lists_all_with_purpose() -> None:
    missing = dict(load().missing_for("check"))
    assert set(missing) == {"DISCORD_TOKEN", "DISCORD_GUILD_ID", "NOTIFY_CHANNEL_ID", "APPROVER_ROLE_ID",
                            "VAST_API_KEY", "SSH_KEY_PATH", "PROVISION_SCRIPT_URL"}
    assert all(len(why) > 10 for why in missing.values())
    assert load(VAST_BACKEND="sim").missing_for("check") == []


def test_blank_values_count_as_unset() -> None:
    s = load(DISCORD_TOKEN="", DISCORD_GUILD_ID="  ")
    assert s.discord_token is None and s.discord_guild_id is None


def test_env_example_documents_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"\n{name.upper()}=" in text, f"{name.upper()} is missing from .env.example"


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("VAST_BACKEND=sim\nPOLL_INTERVAL=90s\n")
    s = load_settings(_env_file=env)
    assert s.is_sim and s.poll_interval == 90
