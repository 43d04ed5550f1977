"""The seam between the bot and the script on the instance."""
