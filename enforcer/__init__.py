"""cap-enforcer: sends CoA/Disconnect, applies auto top-ups, closes periods (issue 4)."""
