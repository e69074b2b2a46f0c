"""Deployment files, and the cluster drill (`make drill`)."""
