"""The cluster drill: a 3-node RabbitMQ cluster, haproxy and PgBouncer, nodes killed under load."""
