"""Secrets engine mounts through the real hvac client, unmodified, against ferry-vault.

Run by tests/tests/vault_hvac.rs with VAULT_ADDR and VAULT_TOKEN set (against a primary, and
against a secondary, where every change is forwarded). Any failed check raises.
"""
import os

import hvac
from hvac.exceptions import InvalidRequest

client = hvac.Client(url=os.environ["VAULT_ADDR"], token=os.environ["VAULT_TOKEN"])

mounts = client.sys.list_mounted_secrets_engines()["data"]
assert mounts["secret/"]["type"] == "kv" and mounts["secret/"]["options"]["version"] == "2", mounts
assert mounts["transit/"]["type"] == "transit", mounts

# Enable a KV version 2 engine and a transit engine at new paths, and use them.
client.sys.enable_secrets_engine(backend_type="kv", path="apps", options={"version": "2"},
                                 description="application secrets")
client.sys.enable_secrets_engine(backend_type="transit", path="crypto")
mounts = client.sys.list_mounted_secrets_engines()["data"]
assert mounts["apps/"]["description"] == "application secrets", mounts
assert mounts["crypto/"]["type"] == "transit", mounts

client.secrets.kv.v2.create_or_update_secret(path="web", secret={"port": "8080"}, mount_point="apps")
read = client.secrets.kv.v2.read_secret_version(path="web", mount_point="apps",
                                                raise_on_deleted_version=True)
assert read["data"]["data"] == {"port": "8080"}, read
client.secrets.kv.v2.configure(max_versions=3, mount_point="apps")
assert client.secrets.kv.v2.read_configuration(mount_point="apps")["data"]["max_versions"] == 3

client.secrets.transit.create_key(name="k", mount_point="crypto")
sealed = client.secrets.transit.encrypt_data(name="k", plaintext="aGVsbG8=", mount_point="crypto")
ciphertext = sealed["data"]["ciphertext"]
opened = client.secrets.transit.decrypt_data(name="k", ciphertext=ciphertext, mount_point="crypto")
assert opened["data"]["plaintext"] == "aGVsbG8="

# Tune and read the tuning back.
client.sys.tune_mount_configuration(path="apps", default_lease_ttl="30m", max_lease_ttl="2h")
tune = client.sys.read_mount_configuration(path="apps")["data"]
assert tune["default_lease_ttl"] == 1800 and tune["max_lease_ttl"] == 7200, tune

# A path in use and an unknown engine are refused; nothing changes.
for kwargs, says in [
    (dict(backend_type="kv", path="apps", options={"version": "2"}), "already in use"),
    (dict(backend_type="database", path="db"), "unsupported secrets engine type"),
]:
    try:
        client.sys.enable_secrets_engine(**kwargs)
        raise AssertionError(f"{kwargs} was accepted")
    except InvalidRequest as e:
        assert says in str(e), e
assert "db/" not in client.sys.list_mounted_secrets_engines()["data"]

# Disable: the engine and its data are gone.
client.sys.disable_secrets_engine(path="apps")
assert "apps/" not in client.sys.list_mounted_secrets_engines()["data"]
client.sys.enable_secrets_engine(backend_type="kv-v2", path="apps")
try:
    client.secrets.kv.v2.read_secret_version(path="web", mount_point="apps", raise_on_deleted_version=True)
    raise AssertionError("a disabled mount's data survived")
except hvac.exceptions.InvalidPath:
    pass

print("hvac mounts: all checks passed")
