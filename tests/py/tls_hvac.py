"""hvac against ferry-vault over TLS, verifying the server's certificate with VAULT_CACERT."""

import os

import hvac

client = hvac.Client(
    url=os.environ["VAULT_ADDR"],
    token=os.environ["VAULT_TOKEN"],
    verify=os.environ["VAULT_CACERT"],
)
assert os.environ["VAULT_ADDR"].startswith("https://"), os.environ["VAULT_ADDR"]
health = client.sys.read_health_status(method="GET")
assert health["initialized"] and not health["sealed"], health
client.secrets.kv.v2.create_or_update_secret(path="over-tls", secret={"who": "hvac"})
read = client.secrets.kv.v2.read_secret_version(path="over-tls", raise_on_deleted_version=True)
assert read["data"]["data"] == {"who": "hvac"}, read

# A client that does not trust the CA refuses the server.
untrusting = hvac.Client(url=os.environ["VAULT_ADDR"], token=os.environ["VAULT_TOKEN"], verify=True)
try:
    untrusting.sys.read_health_status(method="GET")
except Exception as e:  # requests.exceptions.SSLError
    assert "certificate" in str(e).lower() or "ssl" in str(e).lower(), e
else:
    raise AssertionError("a client without the CA accepted the server's certificate")
print("all checks passed")
