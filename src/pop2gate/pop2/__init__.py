"""POP2 (RFC 937), both roles, without I/O: the grammar (wire), the server and client state machines."""
