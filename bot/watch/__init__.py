"""The provision watch engine: log bytes to lines, lines to milestones and findings, and
findings plus deadlines to decisions. Nothing in here knows about Discord."""
