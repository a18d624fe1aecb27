"""ACL policies through the real hvac client, unmodified, against ferry-vault.

Run by tests/tests/vault_hvac.rs with VAULT_ADDR and VAULT_TOKEN (a root token) set.
"""
import os

import hvac
from hvac.adapters import RawAdapter
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

# A token that may only list. A list reads a directory: hvac sends LIST secret/metadata/app (or,
# in strict_http mode, GET ...?list=true), which Vault checks as secret/metadata/app/, and an
# exact rule on the directory's name grants it.
LISTER = """
path "secret/data/*" { capabilities = ["list"] }
path "secret/metadata/app" { capabilities = ["list"] }
"""
root.sys.create_or_update_acl_policy(name="lister", policy=LISTER)
lister_token = root.auth.token.create(policies=["lister"], ttl="1h")["auth"]["client_token"]
for strict_http in (False, True):
    lister = hvac.Client(url=addr, token=lister_token, strict_http=strict_http)
    assert lister.secrets.kv.v2.list_secrets(path="app")["data"]["keys"] == ["admin", "db"]
# `?list=true` lists, and only on GET: it never reads nor writes a secret.
raw = hvac.Client(url=addr, token=lister_token, adapter=RawAdapter)
r = raw.adapter.get("/v1/secret/data/app/db", params={"list": "true"}, raise_exception=False)
assert r.status_code == 405, (r.status_code, r.text)
assert "password" not in r.text, r.text
r = raw.adapter.post(
    "/v1/secret/data/app/db",
    params={"list": "true"},
    json={"data": {"password": "overwritten"}},
    raise_exception=False,
)
assert r.status_code == 403, (r.status_code, r.text)
r = raw.adapter.delete("/v1/secret/data/app/db", params={"list": "true"}, raise_exception=False)
assert r.status_code == 403, (r.status_code, r.text)
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
