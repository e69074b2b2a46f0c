"""Runnable examples for downstream teams (see docs/downstream.md)."""
