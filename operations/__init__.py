"""What operators use: reading and repairing the system; not on the hot path."""
