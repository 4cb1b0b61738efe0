"""dom0: the privileged service domain (xenstored, toolstack, native drivers,
backends)."""
