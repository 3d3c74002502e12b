"""Per-sandbox monitoring: Prometheus text, /proc readings, RPC timings, the monitor socket."""
