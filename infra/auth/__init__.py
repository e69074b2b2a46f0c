"""Who may call the API: API keys (`keys`) and the roles they carry."""
