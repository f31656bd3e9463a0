"""The I/O edge: listeners, sessions, per-address limits, privileges."""
