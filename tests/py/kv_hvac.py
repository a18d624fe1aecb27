"""KV version 2 through the real hvac client, unmodified, against ferry-vault.

Run by tests/tests/vault_hvac.rs with VAULT_ADDR and VAULT_TOKEN set. Any failed check raises,
and the script exits non-zero with the traceback.
"""
import os

import hvac
from hvac.exceptions import Forbidden, InvalidPath, InvalidRequest

client = hvac.Client(url=os.environ["VAULT_ADDR"], token=os.environ["VAULT_TOKEN"])
assert client.is_authenticated(), "the root token is not accepted"
assert client.sys.read_health_status(method="GET")["sealed"] is False

kv = client.secrets.kv.v2

# Write, read, versions.
written = kv.create_or_update_secret(path="app/db", secret={"user": "alice", "password": "s3cret"})
assert written["data"]["version"] == 1, written
kv.create_or_update_secret(path="app/db", secret={"user": "alice", "password": "n3w"}, cas=1)
latest = kv.read_secret_version(path="app/db", raise_on_deleted_version=True)
assert latest["data"]["data"] == {"user": "alice", "password": "n3w"}, latest
assert latest["data"]["metadata"]["version"] == 2
first = kv.read_secret_version(path="app/db", version=1, raise_on_deleted_version=True)
assert first["data"]["data"]["password"] == "s3cret"

# Check-and-set refuses a stale version and changes nothing.
try:
    kv.create_or_update_secret(path="app/db", secret={"x": "y"}, cas=1)
    raise AssertionError("a stale cas was accepted")
except InvalidRequest as e:
    assert "check-and-set" in str(e), e
assert kv.read_secret_metadata(path="app/db")["data"]["current_version"] == 2

# List.
kv.create_or_update_secret(path="app/cache", secret={"ttl": "60"})
kv.create_or_update_secret(path="app/nested/deep", secret={"k": "v"})
keys = kv.list_secrets(path="app")["data"]["keys"]
assert keys == ["cache", "db", "nested/"], keys

# Soft delete, undelete, destroy.
kv.delete_latest_version_of_secret(path="app/db")
try:
    kv.read_secret_version(path="app/db", raise_on_deleted_version=True)
    raise AssertionError("a deleted version was readable")
except InvalidPath:
    pass
kv.undelete_secret_versions(path="app/db", versions=[2])
assert kv.read_secret_version(path="app/db", raise_on_deleted_version=True)["data"]["data"]["password"] == "n3w"
kv.destroy_secret_versions(path="app/db", versions=[1])
meta = kv.read_secret_metadata(path="app/db")["data"]
assert meta["versions"]["1"]["destroyed"] is True, meta
try:
    kv.read_secret_version(path="app/db", version=1, raise_on_deleted_version=True)
    raise AssertionError("a destroyed version was readable")
except InvalidPath:
    pass

# Metadata delete removes every version.
kv.delete_metadata_and_all_versions(path="app/cache")
try:
    kv.read_secret_version(path="app/cache", raise_on_deleted_version=True)
    raise AssertionError("a deleted secret was readable")
except InvalidPath:
    pass

# A bad token is refused.
stranger = hvac.Client(url=os.environ["VAULT_ADDR"], token="hvs.nobody")
try:
    stranger.secrets.kv.v2.read_secret_version(path="app/db", raise_on_deleted_version=True)
    raise AssertionError("an unknown token read a secret")
except Forbidden:
    pass

print("hvac kv-v2: all checks passed")
