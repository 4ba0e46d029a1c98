"""The provisioned Grafana dashboards as code, one module per dashboard.

`queries` and `panels` are the building blocks; `overview`, `runtime`, `dependencies` and `logs_traces`
each define `build()`, which returns one dashboard's JSON model. grafana/build_dashboards.py writes them
to grafana/dashboards/.
"""
