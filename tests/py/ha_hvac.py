"""A performance standby through the real hvac client, unmodified: its health and leader status
as Vault reports them, and writes forwarded to the active node and read back at once.

Run by tests/tests/ha_nodes.rs with VAULT_ADDR/VAULT_TOKEN naming a standby and
VAULT_ACTIVE_ADDR the active node's address. Any failed check raises.
"""
import os

import hvac

standby = hvac.Client(url=os.environ["VAULT_ADDR"], token=os.environ["VAULT_TOKEN"])
active_addr = os.environ["VAULT_ACTIVE_ADDR"]

# sys/health: a performance standby answers 473 by default (hvac hands back the response).
health = standby.sys.read_health_status(method="GET")
assert not isinstance(health, dict), health
assert health.status_code == 473, health.status_code
body = health.json()
assert body["standby"] is True and body["performance_standby"] is True, body
assert body["sealed"] is False and body["initialized"] is True, body
# A chosen code for performance standbys, as load balancers use it.
health = standby.sys.read_health_status(method="GET", performance_standby_code=200)
assert isinstance(health, dict) and health["performance_standby"] is True, health

# sys/leader.
leader = standby.sys.read_leader_status()
assert leader["ha_enabled"] is True, leader
assert leader["is_self"] is False, leader
assert leader["performance_standby"] is True, leader
assert leader["leader_address"] == active_addr, (leader, active_addr)

# Writes through the standby, read back on it at once.
for n in range(10):
    standby.secrets.kv.v2.create_or_update_secret(path="ha-ryw", secret={"n": str(n)})
    here = standby.secrets.kv.v2.read_secret_version(path="ha-ryw", raise_on_deleted_version=True)
    assert here["data"]["data"] == {"n": str(n)}, (n, here)
active = hvac.Client(url=active_addr, token=os.environ["VAULT_TOKEN"])
there = active.secrets.kv.v2.read_secret_version(path="ha-ryw", raise_on_deleted_version=True)
assert there["data"]["metadata"]["version"] == 10, there

print("hvac on a performance standby: all checks passed")
