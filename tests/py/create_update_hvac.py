"""Create versus update through the real hvac client, unmodified, against ferry-vault.

Run by tests/tests/vault_create_vs_update.rs with VAULT_ADDR, VAULT_TOKEN (a root token) and
CREATE_TOKEN, UPDATE_TOKEN, BOTH_TOKEN: tokens whose policy grants, on secret/data/*,
transit/encrypt/* and transit/keys/*, only create, only update, and both (and read). The
secret "existing" and the transit key "existing" are there before the script runs.
"""
import base64
import os

import hvac
from hvac.exceptions import Forbidden, InvalidPath

addr = os.environ["VAULT_ADDR"]
root = hvac.Client(url=addr, token=os.environ["VAULT_TOKEN"])
callers = {
    name: hvac.Client(url=addr, token=os.environ[f"{name.upper()}_TOKEN"])
    for name in ("create", "update", "both")
}
PLAINTEXT = base64.b64encode(b"create or update").decode()


def denied(what, call):
    try:
        call()
    except Forbidden:
        return
    raise AssertionError(f"{what} was allowed")


def missing(call):
    try:
        call()
    except InvalidPath:
        return True
    return False


for name, client in callers.items():
    kv = client.secrets.kv.v2
    transit = client.secrets.transit
    may_create = name in ("create", "both")
    may_update = name in ("update", "both")

    # KV v2: a new secret needs create, an existing one update.
    new_secret = f"new-{name}"
    if may_create:
        kv.create_or_update_secret(path=new_secret, secret={"by": name})
        assert root.secrets.kv.v2.read_secret_version(path=new_secret)["data"]["data"] == {"by": name}
    else:
        denied(f"{name} creating {new_secret}", lambda: kv.create_or_update_secret(path=new_secret, secret={"by": name}))
        assert missing(lambda: root.secrets.kv.v2.read_secret_version(path=new_secret)), new_secret
    if may_update:
        kv.create_or_update_secret(path="existing", secret={"by": name})
    else:
        denied(f"{name} overwriting existing", lambda: kv.create_or_update_secret(path="existing", secret={"by": name}))

    # Transit: encrypting with a new key (which creates it) needs create, with an existing one
    # update.
    new_key = f"new-{name}"
    if may_create:
        ct = transit.encrypt_data(name=new_key, plaintext=PLAINTEXT)["data"]["ciphertext"]
        assert ct.startswith("vault:v1:"), ct
        assert root.secrets.transit.read_key(name=new_key)["data"]["latest_version"] == 1
    else:
        denied(f"{name} encrypting with the new key {new_key}", lambda: transit.encrypt_data(name=new_key, plaintext=PLAINTEXT))
        assert missing(lambda: root.secrets.transit.read_key(name=new_key)), new_key
    if may_update:
        transit.encrypt_data(name="existing", plaintext=PLAINTEXT)
    else:
        denied(f"{name} encrypting with the existing key", lambda: transit.encrypt_data(name="existing", plaintext=PLAINTEXT))

    # transit/keys/<name> has no existence check in Vault: creating a key is an update.
    made_key = f"made-{name}"
    if may_update:
        transit.create_key(name=made_key)
        assert root.secrets.transit.read_key(name=made_key)["data"]["name"] == made_key
    else:
        denied(f"{name} creating the key {made_key}", lambda: transit.create_key(name=made_key))

# The older policy API hvac's sys.*_policy calls use, and the accessors list.
root.sys.create_or_update_policy(name="legacy", policy='path "legacy/*" { capabilities = ["read"] }')
assert root.sys.read_policy(name="legacy")["data"]["rules"] == 'path "legacy/*" { capabilities = ["read"] }'
assert "legacy" in root.sys.list_policies()["data"]["policies"]
root.sys.delete_policy(name="legacy")
assert "legacy" not in root.sys.list_policies()["data"]["policies"]
accessors = root.auth.token.list_accessors()["data"]["keys"]
for client in callers.values():
    assert client.auth.token.lookup_self()["data"]["accessor"] in accessors, accessors
denied("listing accessors without sudo", lambda: callers["both"].auth.token.list_accessors())

print("all checks passed")
