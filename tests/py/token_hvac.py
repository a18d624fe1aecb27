"""Token auth through the real hvac client, unmodified, against ferry-vault.

Run by tests/tests/vault_hvac.rs with VAULT_ADDR and VAULT_TOKEN (a root token) set.
"""
import os

import hvac
from hvac.exceptions import Forbidden, InvalidRequest

addr = os.environ["VAULT_ADDR"]
root = hvac.Client(url=addr, token=os.environ["VAULT_TOKEN"])

# Create, then use the new token.
created = root.auth.token.create(policies=["app"], ttl="1h", display_name="ci", meta={"team": "a"})
auth = created["auth"]
assert auth["policies"] == ["app"], auth
assert 3500 < auth["lease_duration"] <= 3600, auth
child = hvac.Client(url=addr, token=auth["client_token"])
me = child.auth.token.lookup_self()["data"]
assert me["display_name"] == "token-ci", me
assert me["accessor"] == auth["accessor"]

# Lookup by token and by accessor.
assert root.auth.token.lookup(auth["client_token"])["data"]["policies"] == ["app"]
by_accessor = root.auth.token.lookup_accessor(auth["accessor"])["data"]
assert by_accessor["id"] == "" and by_accessor["policies"] == ["app"], by_accessor

# Renew.
renewed = root.auth.token.renew(auth["client_token"], increment="2h")["auth"]
assert 7100 < renewed["lease_duration"] <= 7200, renewed
assert 3500 < child.auth.token.renew_self(increment="1h")["auth"]["lease_duration"] <= 3600

# A non-root token cannot create tokens (no policy engine yet: root only).
try:
    child.auth.token.create(policies=["x"])
    raise AssertionError("a non-root token created a token")
except Forbidden:
    pass

# Revoke by token, by accessor, and self.
root.auth.token.revoke(auth["client_token"])
try:
    child.auth.token.lookup_self()
    raise AssertionError("a revoked token still works")
except Forbidden:
    pass
second = root.auth.token.create(policies=["app"], ttl="10m")["auth"]
root.auth.token.revoke_accessor(second["accessor"])
try:
    hvac.Client(url=addr, token=second["client_token"]).auth.token.lookup_self()
    raise AssertionError("a token revoked by accessor still works")
except Forbidden:
    pass
third = root.auth.token.create(policies=["app"], ttl="10m")["auth"]
limited = hvac.Client(url=addr, token=third["client_token"])
limited.auth.token.revoke_self()
try:
    limited.auth.token.lookup_self()
    raise AssertionError("a self-revoked token still works")
except Forbidden:
    pass

# A token limited to two uses is gone after them.
uses = root.auth.token.create(policies=["app"], num_uses=2)["auth"]
twice = hvac.Client(url=addr, token=uses["client_token"])
twice.auth.token.lookup_self()
twice.auth.token.lookup_self()
try:
    twice.auth.token.lookup_self()
    raise AssertionError("a token outlived its uses")
except Forbidden:
    pass

# The token tree, by Vault's rules: a child dies with its parent unless it is an orphan, and an
# orphan needs sudo (no_parent) or create-orphan.
root.sys.create_or_update_acl_policy(
    "creator",
    'path "auth/token/create" { capabilities = ["update"] }\n'
    'path "auth/token/create-orphan" { capabilities = ["update"] }',
)
parent = root.auth.token.create(policies=["creator"], ttl="1h")["auth"]
as_parent = hvac.Client(url=addr, token=parent["client_token"])
kid = as_parent.auth.token.create(policies=["creator"])["auth"]
assert kid["orphan"] is False, kid
# No TTL from a non-root token: the default 768h, never forever.
assert kid["lease_duration"] == 768 * 3600, kid
orphan = as_parent.auth.token.create_orphan(policies=["creator"], ttl="1h")["auth"]
assert orphan["orphan"] is True, orphan
try:
    as_parent.auth.token.create(policies=["creator"], no_parent=True)
    raise AssertionError("a token without sudo created an orphan")
except InvalidRequest as e:
    assert "root or sudo privileges required to create orphan token" in str(e), e
root.auth.token.revoke(parent["client_token"])
try:
    hvac.Client(url=addr, token=kid["client_token"]).auth.token.lookup_self()
    raise AssertionError("a child outlived its revoked parent")
except Forbidden:
    pass
assert hvac.Client(url=addr, token=orphan["client_token"]).auth.token.lookup_self()["data"]["orphan"]

# revoke-orphan: the parent goes, its children stay, as orphans.
parent = root.auth.token.create(policies=["creator"], ttl="1h")["auth"]
kid = hvac.Client(url=addr, token=parent["client_token"]).auth.token.create(policies=["creator"])
root.auth.token.revoke_and_orphan_children(parent["client_token"])
kept = hvac.Client(url=addr, token=kid["auth"]["client_token"]).auth.token.lookup_self()["data"]
assert kept["orphan"] is True, kept

# A limited-use token creates no tokens.
limited = root.auth.token.create(policies=["creator"], ttl="1h", num_uses=3)["auth"]
try:
    hvac.Client(url=addr, token=limited["client_token"]).auth.token.create(policies=["creator"])
    raise AssertionError("a limited-use token created a token")
except InvalidRequest as e:
    assert "restricted use token cannot generate child tokens" in str(e), e

# explicit_max_ttl caps the TTL and renewals, with Vault's warning.
capped = root.auth.token.create(policies=["app"], ttl="1h", explicit_max_ttl="60s")
assert capped["auth"]["lease_duration"] == 60, capped
assert any("capped" in w for w in capped["warnings"]), capped
renewed = root.auth.token.renew(capped["auth"]["client_token"], increment="1h")
assert 0 < renewed["auth"]["lease_duration"] <= 60, renewed
assert any("capped" in w for w in renewed["warnings"]), renewed
looked = root.auth.token.lookup(capped["auth"]["client_token"])["data"]
assert looked["explicit_max_ttl"] == 60 and looked["creation_ttl"] == 60, looked

# Bad input is a 400 that names it.
try:
    root.auth.token.create(ttl="soon")
    raise AssertionError("a bad ttl was accepted")
except InvalidRequest as e:
    assert "not a duration" in str(e), e

print("hvac token: all checks passed")
