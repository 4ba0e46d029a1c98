"""Generated stubs for `platform.v1` (regenerate with `python -m app.rpc.generate`)."""
