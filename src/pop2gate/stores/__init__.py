"""Mail stores: the backends a POP2 session reads from."""
