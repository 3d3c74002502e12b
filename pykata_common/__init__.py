"""What the host (shim) and the guest (agent) both need, defined once.

Shipped in the guest image next to the agent, so it stands alone: standard
library only, importing nothing of `shim`, `agent` or `guest`
(tests/test_import_rules.py checks it).
"""
