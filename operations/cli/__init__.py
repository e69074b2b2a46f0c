"""The operators' `checkout` commands (`dlq`, `trace`); infra.cli.main registers them."""
