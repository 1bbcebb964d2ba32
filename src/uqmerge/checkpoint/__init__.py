"""Checkpoint I/O: lazy sharded reader, atomic sharded writer, architecture layouts."""
