"""Outputs. Each is a sink with the same small interface: journey(j), summary(s), close()."""
