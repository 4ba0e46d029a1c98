"""Protocol packages; the import path mirrors the proto package `platform.v1` under `app.rpc`."""
