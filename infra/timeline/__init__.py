"""Recording the hops of a checkout (`record`); reading them is `operations.timeline`."""
