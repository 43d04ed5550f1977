"""Default snowflakes of the fake guild used by the e2e fixtures (bot settings in tests should use these)."""

APP_ID = 1_100_000_000_000_000_001  # also the bot user's id
GUILD_ID = 1_100_000_000_000_000_002
CHANNEL_ID = 1_100_000_000_000_000_003  # default channel for injected slash commands
NOTIFY_CHANNEL_ID = 1_100_000_000_000_000_004
APPROVER_ROLE_ID = 1_100_000_000_000_000_005
