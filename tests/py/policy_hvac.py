"""ACL policies through the real hvac client, unmodified, against ferry-vault.

Run by tests/tests/vault_hvac.rs with VAULT_ADDR and VAULT_TOKEN (a root token) set.
"""
import os

import hvac
from hvac.exceptions import Forbidden, InvalidRequest

addr = os.environ["VAULT_ADDR"]
root = hvac.Client(url=addr, token=os.environ["VAULT_TOKEN"])

READER = """
# app readers
path "secret/data/app/*" {
  capabilities = ["read"]
}
path "secret/data/app/admin" { capabilities = ["deny"] }
"""
root.sys.create_or_update_acl_policy(name="app-reader", policy=READER)
assert "app-reader" in root.sys.list_acl_policies()["data"]["keys"]
assert root.sys.read_acl_policy(name="app-reader")["data"]["policy"] == READER

root.secrets.kv.v2.create_or_update_secret(path="app/db", secret={"password": "p"})
root.secrets.kv.v2.create_or_update_secret(path="app/admin", secret={"password": "a"})
root.secrets.kv.v2.create_or_update_secret(path="other/x", secret={"k": "v"})

token = root.auth.token.create(policies=["app-reader"], ttl="1h")["auth"]["client_token"]
reader = hvac.Client(url=addr, token=token)
assert reader.secrets.kv.v2.read_secret_version(path="app/db", raise_on_deleted_version=True)["data"]["data"] == {"password": "p"}

def denied(call):
    try:
        call()
    except Forbidden:
        return
    raise AssertionError("a call outside the policy was allowed")

denied(lambda: reader.secrets.kv.v2.create_or_update_secret(path="app/db", secret={"password": "x"}))
denied(lambda: reader.secrets.kv.v2.read_secret_version(path="other/x", raise_on_deleted_version=True))
denied(lambda: reader.secrets.kv.v2.read_secret_version(path="app/admin", raise_on_deleted_version=True))
denied(lambda: reader.sys.create_or_update_acl_policy(name="mine", policy=READER))
denied(lambda: reader.auth.token.create(policies=["app-reader"]))
# The implicit default policy: a token may look itself up.
assert reader.auth.token.lookup_self()["data"]["policies"] == ["app-reader"]
# The secret is unchanged by the refused write.
assert root.secrets.kv.v2.read_secret_version(path="app/db", raise_on_deleted_version=True)["data"]["data"] == {"password": "p"}

# A policy that does not parse is refused and not stored.
try:
    root.sys.create_or_update_acl_policy(name="broken", policy='path "x" { capabilities = ["fly"] }')
    raise AssertionError("a bad policy was accepted")
except InvalidRequest as e:
    assert "unknown capability" in str(e), e
assert "broken" not in root.sys.list_acl_policies()["data"]["keys"]

# Deleting the policy takes the access away.
root.sys.delete_acl_policy(name="app-reader")
denied(lambda: reader.secrets.kv.v2.read_secret_version(path="app/db", raise_on_deleted_version=True))

print("hvac policies: all checks passed")
