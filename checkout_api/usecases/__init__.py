"""One module per use case; each handler owns its transaction."""
