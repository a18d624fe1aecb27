"""Audit devices through the real hvac client, unmodified, against ferry-vault.

Run by tests/tests/vault_audit.rs with VAULT_ADDR, VAULT_TOKEN and AUDIT_DIR (an empty
directory of the test's) set. Any failed check raises, and the script exits non-zero with the
traceback.
"""
import json
import os
import stat

import hvac
from hvac.exceptions import InternalServerError, InvalidRequest

ROOT_TOKEN = os.environ["VAULT_TOKEN"]
client = hvac.Client(url=os.environ["VAULT_ADDR"], token=ROOT_TOKEN)
log_path = os.path.join(os.environ["AUDIT_DIR"], "audit.log")

# Enable and list.
client.sys.enable_audit_device(
    device_type="file", description="all requests", options={"file_path": log_path}
)
devices = client.sys.list_enabled_audit_devices()
device = devices["data"]["file/"]
assert device["type"] == "file", devices
assert device["description"] == "all requests", devices
assert device["options"] == {"file_path": log_path}, devices
assert device["path"] == "file/", devices
assert device["local"] is False, devices
assert devices["file/"] == device, "also at the top level"
assert "salt" not in json.dumps(devices), devices
assert stat.S_IMODE(os.stat(log_path).st_mode) == 0o600, oct(os.stat(log_path).st_mode)

# Raw logging and unknown types are refused by name.
for kwargs, expected in [
    ({"device_type": "file", "path": "raw", "options": {"file_path": log_path, "log_raw": "true"}}, "log_raw"),
    ({"device_type": "socket", "path": "sock", "options": {"address": "127.0.0.1:9"}}, "unsupported audit device type"),
    ({"device_type": "file", "path": "file", "options": {"file_path": log_path}}, "path already in use"),
    ({"device_type": "file", "path": "rel", "options": {"file_path": "audit.log"}}, "must be absolute"),
]:
    try:
        client.sys.enable_audit_device(**kwargs)
        raise AssertionError(f"{kwargs} was accepted")
    except InvalidRequest as e:
        assert expected in str(e), e

# A secret written and read, a token created.
SECRET = "correct-horse-battery-staple"
kv = client.secrets.kv.v2
kv.create_or_update_secret(path="audited/app", secret={"password": SECRET, "n": 7})
assert kv.read_secret_version(path="audited/app", raise_on_deleted_version=True)["data"]["data"]["password"] == SECRET
created = client.auth.token.create(policies=["default"], ttl="1h")
child_token = created["auth"]["client_token"]
child_accessor = created["auth"]["accessor"]
root_accessor = client.auth.token.lookup_self()["data"]["accessor"]

hashed_secret = client.sys.calculate_hash(path="file", input_to_hash=SECRET)["data"]["hash"]
assert hashed_secret.startswith("hmac-sha256:") and len(hashed_secret) == 12 + 64, hashed_secret
hashed_child = client.sys.calculate_hash(path="file", input_to_hash=child_token)["data"]["hash"]
hashed_root = client.sys.calculate_hash(path="file", input_to_hash=ROOT_TOKEN)["data"]["hash"]
hashed_root_accessor = client.sys.calculate_hash(path="file", input_to_hash=root_accessor)["data"]["hash"]

with open(log_path) as f:
    text = f.read()
for raw in [SECRET, child_token, child_accessor, ROOT_TOKEN, root_accessor]:
    assert raw not in text, f"{raw!r} is in the audit log in clear"
for hashed in [hashed_secret, hashed_child, hashed_root, hashed_root_accessor]:
    assert hashed in text, f"{hashed} is not in the audit log"

entries = [json.loads(line) for line in text.splitlines()]
assert all(set(e) >= {"time", "type", "auth", "request", "error"} for e in entries), entries[0]


def pair(operation, path):
    """The request and response entries of the first request of `operation` on `path`."""
    found = [e for e in entries if e["request"]["path"] == path and e["request"]["operation"] == operation]
    request = next(e for e in found if e["type"] == "request")
    response = next(e for e in found if e["type"] == "response" and e["request"]["id"] == request["request"]["id"])
    return request, response


request, response = pair("update", "secret/data/audited/app")
assert request["auth"]["client_token"] == hashed_root, request
assert request["auth"]["accessor"] == hashed_root_accessor, request
assert request["auth"]["policies"] == ["root"] and request["auth"]["display_name"] == "root", request
assert request["request"]["client_token"] == hashed_root, request
assert request["request"]["client_token_accessor"] == hashed_root_accessor, request
assert request["request"]["data"]["data"] == {"password": hashed_secret, "n": 7}, request
assert request["request"]["mount_type"] == "kv", request
assert request["request"]["remote_address"] == "127.0.0.1", request
assert request["error"] == "", request
assert response["response"]["data"]["version"] == 1, response

request, response = pair("read", "secret/data/audited/app")
assert response["response"]["data"]["data"]["password"] == hashed_secret, response

request, response = pair("update", "auth/token/create")
assert response["response"]["auth"]["client_token"] == hashed_child, response
assert response["response"]["auth"]["accessor"].startswith("hmac-sha256:"), response
assert response["response"]["mount_type"] == "token", response

# A request no device can write is refused and not executed: the log becomes /dev/full.
os.rename(log_path, log_path + ".1")
os.symlink("/dev/full", log_path)
try:
    kv.create_or_update_secret(path="audited/app", secret={"password": "never-written"})
    raise AssertionError("a request was executed while no audit device could write it")
except InternalServerError as e:
    assert "audit device" in str(e) and "not executed" in str(e), e
os.remove(log_path)  # writable again: the next entry creates a new file
latest = kv.read_secret_version(path="audited/app", raise_on_deleted_version=True)["data"]
assert latest["data"]["password"] == SECRET and latest["metadata"]["version"] == 1, latest
with open(log_path) as f:
    assert "never-written" not in f.read()
assert stat.S_IMODE(os.stat(log_path).st_mode) == 0o600, oct(os.stat(log_path).st_mode)

# Disable; enabling the same path again draws a new salt.
client.sys.disable_audit_device(path="file")
assert "file/" not in client.sys.list_enabled_audit_devices()["data"]
client.sys.enable_audit_device(device_type="file", options={"file_path": log_path})
again = client.sys.calculate_hash(path="file", input_to_hash=SECRET)["data"]["hash"]
assert again != hashed_secret, "re-enabling kept the old salt"
client.sys.disable_audit_device(path="file")

print("all checks passed")
