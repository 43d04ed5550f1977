"""Test support shared across the test folders: the fake Discord and other stand-ins for the outside."""
