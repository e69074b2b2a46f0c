"""The HTTP API of the checkout system (CONTRACT.md section 3).

`checkout_api.app.create_app(settings)` builds the app; `checkout_api.main.run(settings)`
serves it. Routes (`routes/`) parse and shape; each calls one handler (`usecases/`)
that owns its transaction. A checkout never publishes: it writes an outbox row.
"""
