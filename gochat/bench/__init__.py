"""``gochat-bench``: the Go server's load test (压测) as a tool.

It owns the benchmark client (a lean WebSocket client that speaks only the
GoChat-compatible subset, so it can be pointed at the Go original), the
scenarios (group, single, connections), the capacity formula and the
reports. It talks to a node only over its public HTTP and WebSocket API and
never imports the node's logic, store or gateway.
"""
