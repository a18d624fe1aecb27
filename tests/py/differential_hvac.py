"""hvac's own calls for the differential tests (tests/tests/openbao_differential.rs).

Run once per server with VAULT_ADDR, VAULT_TOKEN (a root token) and DIFF_NS (a prefix for the
names of what it creates, so that servers sharing storage do not see each other's objects).
Checks nothing itself: prints one JSON object per call, `{"call", "outcome", "value"}`, where
outcome is "ok" or the class of the exception hvac raised, and value is what the call returned
(a response without JSON as its status code). The test compares the three servers' lines.
"""
import json
import os

import hvac
import requests
from hvac.exceptions import VaultError

addr = os.environ["VAULT_ADDR"]
ns = os.environ["DIFF_NS"]
root = hvac.Client(url=addr, token=os.environ["VAULT_TOKEN"])


def plain(value):
    """What a call returned, as JSON."""
    if isinstance(value, requests.Response):
        try:
            body = value.json()
        except ValueError:
            body = None
        return {"status_code": value.status_code, "body": body}
    return value


def call(name, fn):
    """Runs fn, prints its outcome and returns its value (None when it raised)."""
    try:
        value = plain(fn())
        outcome = "ok"
    except VaultError as e:
        value = {"errors": e.errors}
        outcome = type(e).__name__
    print(json.dumps({"call": name, "outcome": outcome, "value": value}), flush=True)
    return value if outcome == "ok" else None


kv = root.secrets.kv.v2
transit = root.secrets.transit
token = root.auth.token

# Status.
call("health", lambda: root.sys.read_health_status(method="GET"))
call("seal status", lambda: root.sys.read_seal_status())
call("is initialized", lambda: root.sys.is_initialized())
call("is sealed", lambda: root.sys.is_sealed())

# Mounts.
call("enable kv", lambda: root.sys.enable_secrets_engine(
    backend_type="kv", path=f"{ns}hkv", options={"version": "2"}, description="hvac"))
call("enable transit", lambda: root.sys.enable_secrets_engine(
    backend_type="transit", path=f"{ns}htr"))
call("enable again", lambda: root.sys.enable_secrets_engine(backend_type="kv", path=f"{ns}hkv"))
call("list mounts", lambda: root.sys.list_mounted_secrets_engines())
call("read mount", lambda: root.sys.read_mount_configuration(path=f"{ns}hkv"))
call("tune mount", lambda: root.sys.tune_mount_configuration(
    path=f"{ns}hkv", default_lease_ttl="1h", max_lease_ttl="2h"))
call("read tuned mount", lambda: root.sys.read_mount_configuration(path=f"{ns}hkv"))
call("disable transit", lambda: root.sys.disable_secrets_engine(path=f"{ns}htr"))

# KV version 2.
m = f"{ns}hkv"
call("kv configure", lambda: kv.configure(max_versions=3, cas_required=False, mount_point=m))
call("kv read configuration", lambda: kv.read_configuration(mount_point=m))
call("kv create", lambda: kv.create_or_update_secret(path="a", secret={"k": "1"}, mount_point=m))
call("kv update with cas", lambda: kv.create_or_update_secret(
    path="a", secret={"k": "2"}, cas=1, mount_point=m))
call("kv update with a wrong cas", lambda: kv.create_or_update_secret(
    path="a", secret={"k": "3"}, cas=1, mount_point=m))
call("kv patch", lambda: kv.patch(path="a", secret={"j": "x"}, mount_point=m))
call("kv read", lambda: kv.read_secret_version(path="a", mount_point=m,
                                               raise_on_deleted_version=True))
call("kv read version", lambda: kv.read_secret_version(path="a", version=1, mount_point=m,
                                                       raise_on_deleted_version=True))
call("kv read missing", lambda: kv.read_secret_version(path="nothing", mount_point=m,
                                                       raise_on_deleted_version=True))
call("kv read metadata", lambda: kv.read_secret_metadata(path="a", mount_point=m))
call("kv update metadata", lambda: kv.update_metadata(
    path="a", max_versions=5, cas_required=True, custom_metadata={"o": "p"}, mount_point=m))
call("kv write without cas when required", lambda: kv.create_or_update_secret(
    path="a", secret={"k": "4"}, mount_point=m))
call("kv list", lambda: kv.list_secrets(path="", mount_point=m))
call("kv list missing", lambda: kv.list_secrets(path="nothing", mount_point=m))
call("kv delete latest", lambda: kv.delete_latest_version_of_secret(path="a", mount_point=m))
call("kv read deleted", lambda: kv.read_secret_version(path="a", mount_point=m,
                                                       raise_on_deleted_version=False))
call("kv delete versions", lambda: kv.delete_secret_versions(path="a", versions=[1],
                                                             mount_point=m))
call("kv undelete versions", lambda: kv.undelete_secret_versions(path="a", versions=[1, 3],
                                                                 mount_point=m))
call("kv destroy versions", lambda: kv.destroy_secret_versions(path="a", versions=[2],
                                                               mount_point=m))
call("kv read destroyed", lambda: kv.read_secret_version(path="a", version=2, mount_point=m,
                                                         raise_on_deleted_version=False))
call("kv delete metadata", lambda: kv.delete_metadata_and_all_versions(path="a", mount_point=m))
call("kv read metadata deleted", lambda: kv.read_secret_metadata(path="a", mount_point=m))

# Transit.
k = f"{ns}hk"
call("transit create", lambda: transit.create_key(name=k))
call("transit create typed", lambda: transit.create_key(name=f"{k}2", key_type="aes256-gcm96"))
call("transit read", lambda: transit.read_key(name=k))
call("transit list", lambda: transit.list_keys())
encrypted = call("transit encrypt", lambda: transit.encrypt_data(name=k, plaintext="aGk="))
ciphertext = (encrypted or {}).get("data", {}).get("ciphertext", "")
call("transit decrypt", lambda: transit.decrypt_data(name=k, ciphertext=ciphertext))
call("transit encrypt batch", lambda: transit.encrypt_data(
    name=k, batch_input=[{"plaintext": "aGk="}, {"plaintext": "eW8="}]))
call("transit rotate", lambda: transit.rotate_key(name=k))
call("transit rewrap", lambda: transit.rewrap_data(name=k, ciphertext=ciphertext))
call("transit configure", lambda: transit.update_key_configuration(
    name=k, min_decryption_version=2, deletion_allowed=True))
call("transit decrypt below min", lambda: transit.decrypt_data(name=k, ciphertext=ciphertext))
call("transit delete", lambda: transit.delete_key(name=k))
call("transit read deleted", lambda: transit.read_key(name=k))

# ACL policies.
rules = f'path "{m}/data/*" {{ capabilities = ["read", "list"] }}'
call("policy write", lambda: root.sys.create_or_update_acl_policy(name=f"{ns}hp", policy=rules))
call("policy read", lambda: root.sys.read_acl_policy(name=f"{ns}hp"))
call("policy list", lambda: root.sys.list_acl_policies())
call("policy read missing", lambda: root.sys.read_acl_policy(name=f"{ns}none"))
call("policy write bad", lambda: root.sys.create_or_update_acl_policy(name=f"{ns}hb",
                                                                      policy="path {"))
call("legacy policy list", lambda: root.sys.list_policies())
call("legacy policy read", lambda: root.sys.read_policy(name=f"{ns}hp"))
call("legacy policy write", lambda: root.sys.create_or_update_policy(name=f"{ns}hl",
                                                                     policy=rules))
call("legacy policy delete", lambda: root.sys.delete_policy(name=f"{ns}hl"))

# Tokens.
created = call("token create", lambda: token.create(policies=[f"{ns}hp"], ttl="1h",
                                                    num_uses=5, meta={"a": "b"}))
auth = (created or {}).get("auth") or {}
child = hvac.Client(url=addr, token=auth.get("client_token", ""))
call("token lookup", lambda: token.lookup(auth.get("client_token", "")))
call("token lookup self", lambda: child.auth.token.lookup_self())
call("token lookup accessor", lambda: token.lookup_accessor(auth.get("accessor", "")))
call("token renew", lambda: token.renew(auth.get("client_token", ""), increment="2h"))
call("token renew self", lambda: child.auth.token.renew_self(increment="1h"))
call("token renew accessor", lambda: token.renew_accessor(auth.get("accessor", ""), increment="1h"))
call("token use a policy", lambda: child.secrets.kv.v2.list_secrets(path="", mount_point=m))
call("token denied", lambda: child.sys.list_mounted_secrets_engines())
call("token list accessors", lambda: token.list_accessors())
orphan = call("token create orphan", lambda: token.create_orphan(policies=["default"]))
orphan_token = ((orphan or {}).get("auth") or {}).get("client_token", "")
call("token revoke accessor", lambda: token.revoke_accessor(auth.get("accessor", "")))
call("token lookup revoked", lambda: token.lookup(auth.get("client_token", "")))
call("token revoke orphan", lambda: token.revoke_and_orphan_children(orphan_token))
call("token revoke", lambda: token.revoke(orphan_token))
call("token revoke self", lambda: hvac.Client(
    url=addr, token=token.create(policies=["default"])["auth"]["client_token"]
).auth.token.revoke_self())

# Clean-up, compared too.
call("policy delete", lambda: root.sys.delete_acl_policy(name=f"{ns}hp"))
call("disable kv", lambda: root.sys.disable_secrets_engine(path=m))
