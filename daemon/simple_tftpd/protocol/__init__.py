"""The TFTP protocol without I/O: packet codec and transfer state machines."""
