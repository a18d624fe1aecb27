"""Transit through the real hvac client, unmodified, against ferry-vault.

Run by tests/tests/vault_hvac.rs with VAULT_ADDR and VAULT_TOKEN (a root token) set.
"""
import base64
import os

import hvac
from hvac.exceptions import InvalidRequest

client = hvac.Client(url=os.environ["VAULT_ADDR"], token=os.environ["VAULT_TOKEN"])
transit = client.secrets.transit


def b64(s):
    return base64.b64encode(s.encode()).decode()


transit.create_key(name="orders")
key = transit.read_key(name="orders")["data"]
assert key["type"] == "aes256-gcm96" and key["latest_version"] == 1, key
assert "orders" in transit.list_keys()["data"]["keys"]

c1 = transit.encrypt_data(name="orders", plaintext=b64("card 4111"))["data"]["ciphertext"]
assert c1.startswith("vault:v1:"), c1
assert base64.b64decode(transit.decrypt_data(name="orders", ciphertext=c1)["data"]["plaintext"]) == b"card 4111"

# Rotate, rewrap, and the old version still decrypts until min_decryption_version moves.
transit.rotate_key(name="orders")
c2 = transit.rewrap_data(name="orders", ciphertext=c1)["data"]["ciphertext"]
assert c2.startswith("vault:v2:"), c2
assert base64.b64decode(transit.decrypt_data(name="orders", ciphertext=c2)["data"]["plaintext"]) == b"card 4111"
transit.update_key_configuration(name="orders", min_decryption_version=2)
try:
    transit.decrypt_data(name="orders", ciphertext=c1)
    raise AssertionError("a version below min_decryption_version decrypted")
except InvalidRequest as e:
    assert "min_decryption_version" in str(e), e

# Batches: each item answers for itself.
batch = transit.encrypt_data(name="orders", batch_input=[{"plaintext": b64("a")}, {"plaintext": b64("b")}])
cts = [r["ciphertext"] for r in batch["data"]["batch_results"]]
out = transit.decrypt_data(name="orders", batch_input=[{"ciphertext": cts[0]}, {"ciphertext": "vault:v2:garbage"}, {"ciphertext": cts[1]}])
results = out["data"]["batch_results"]
assert base64.b64decode(results[0]["plaintext"]) == b"a"
assert "error" in results[1], results
assert base64.b64decode(results[2]["plaintext"]) == b"b"

# A bad ciphertext is a 400 that names it.
try:
    transit.decrypt_data(name="orders", ciphertext="not-a-ciphertext")
    raise AssertionError("a bad ciphertext was accepted")
except InvalidRequest as e:
    assert "invalid ciphertext" in str(e), e

# Deletion needs deletion_allowed.
try:
    transit.delete_key(name="orders")
    raise AssertionError("a key was deleted without deletion_allowed")
except InvalidRequest as e:
    assert "deletion is not allowed" in str(e), e
transit.update_key_configuration(name="orders", deletion_allowed=True)
transit.delete_key(name="orders")
try:
    transit.encrypt_data(name="orders", plaintext=b64("x"))  # recreated on demand, as in Vault
except InvalidRequest:
    raise AssertionError("encrypting with a missing key should create it")
assert transit.read_key(name="orders")["data"]["latest_version"] == 1

print("hvac transit: all checks passed")
