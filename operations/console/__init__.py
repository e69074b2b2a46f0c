"""The operators' console at /console: server-rendered pages over `operations`.

Mounted by the API (`checkout_api.app`); see `app.create_console`. Every action is a
plain HTML form; the console calls the same functions as the `checkout` commands.
"""
