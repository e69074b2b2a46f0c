"""Request and response models of the HTTP API (CONTRACT.md section 3)."""
