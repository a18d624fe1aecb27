"""Across a replication pair, with the real hvac client, unmodified: writes through the
secondary reach the primary and are read back at once (read-your-write), tokens stay local to
their cluster, permission is checked on the secondary, and replication status reads through hvac.

Run by tests/tests/vault_hvac.rs with VAULT_ADDR/VAULT_TOKEN naming the secondary and
VAULT_PRIMARY_ADDR/VAULT_PRIMARY_TOKEN the primary. Any failed check raises.
"""
import os
import time

import hvac
from hvac.exceptions import Forbidden

secondary = hvac.Client(url=os.environ["VAULT_ADDR"], token=os.environ["VAULT_TOKEN"])
primary = hvac.Client(url=os.environ["VAULT_PRIMARY_ADDR"], token=os.environ["VAULT_PRIMARY_TOKEN"])

# Replication status, as Vault reports it.
# (hvac has no helper for it; its adapter calls any path.)
status = secondary.adapter.get("/v1/sys/replication/status")["data"]
assert status["performance"]["mode"] == "secondary", status
assert primary.adapter.get("/v1/sys/replication/status")["data"]["performance"]["mode"] == "primary"

# Write through the secondary, read your write on the secondary at once, and on the primary.
for n in range(20):
    secondary.secrets.kv.v2.create_or_update_secret(path="ryw", secret={"n": str(n)})
    here = secondary.secrets.kv.v2.read_secret_version(path="ryw", raise_on_deleted_version=True)
    assert here["data"]["data"] == {"n": str(n)}, (n, here)
there = primary.secrets.kv.v2.read_secret_version(path="ryw", raise_on_deleted_version=True)
assert there["data"]["data"] == {"n": "19"} and there["data"]["metadata"]["version"] == 20, there

# Written on the primary, read on the secondary (eventually: it streams in).
primary.secrets.kv.v2.create_or_update_secret(path="from-primary", secret={"ok": "yes"})
deadline = time.monotonic() + 30
while True:
    try:
        got = secondary.secrets.kv.v2.read_secret_version(path="from-primary", raise_on_deleted_version=True)
        assert got["data"]["data"] == {"ok": "yes"}
        break
    except hvac.exceptions.InvalidPath:
        assert time.monotonic() < deadline, "the primary's write never reached the secondary"
        time.sleep(0.05)

# Tokens are local: one made on the secondary works there and not on the primary.
token = secondary.auth.token.create(policies=["default"], ttl="10m")["auth"]["client_token"]
assert hvac.Client(url=os.environ["VAULT_ADDR"], token=token).is_authenticated()
assert not hvac.Client(url=os.environ["VAULT_PRIMARY_ADDR"], token=token).is_authenticated()
assert not hvac.Client(url=os.environ["VAULT_PRIMARY_ADDR"], token=os.environ["VAULT_TOKEN"]).is_authenticated()

# A policy written through the secondary; a token of the secondary holding it may write one
# path (forwarded) and is refused another (on the secondary, never reaching the primary).
secondary.sys.create_or_update_acl_policy(
    name="web-writer", policy='path "secret/data/web/*" { capabilities = ["create", "update", "read"] }')
writer_token = secondary.auth.token.create(policies=["web-writer"])["auth"]["client_token"]
writer = hvac.Client(url=os.environ["VAULT_ADDR"], token=writer_token)
writer.secrets.kv.v2.create_or_update_secret(path="web/config", secret={"a": "1"})
assert writer.secrets.kv.v2.read_secret_version(path="web/config", raise_on_deleted_version=True)["data"]["data"] == {"a": "1"}
try:
    writer.secrets.kv.v2.create_or_update_secret(path="db/config", secret={"a": "1"})
    raise AssertionError("a write outside the policy was allowed")
except Forbidden:
    pass
try:
    primary.secrets.kv.v2.read_secret_version(path="db/config", raise_on_deleted_version=True)
    raise AssertionError("a refused write reached the primary")
except hvac.exceptions.InvalidPath:
    pass

# Transit on the secondary: key made through the primary, encryption served locally.
secondary.secrets.transit.create_key(name="orders")
ct = secondary.secrets.transit.encrypt_data(name="orders", plaintext="b3JkZXI=")["data"]["ciphertext"]
assert primary.secrets.transit.decrypt_data(name="orders", ciphertext=ct)["data"]["plaintext"] == "b3JkZXI="
secondary.secrets.transit.rotate_key(name="orders")
rewrapped = secondary.secrets.transit.rewrap_data(name="orders", ciphertext=ct)["data"]["ciphertext"]
assert rewrapped.startswith("vault:v2:"), rewrapped

print("hvac across a replication pair: all checks passed")
