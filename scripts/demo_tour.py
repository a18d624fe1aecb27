"""The `make demo` tour: the real hvac client from PyPI, unmodified, against two Ferry regions.

Run by scripts/demo.sh once west is the primary and east its secondary, with
FERRY_DEMO_{WEST,EAST}_{ADDR,TOKEN} set, and FERRY_DEMO_CACERT to the CA the servers' certificate
chains to. Prints every step and its result; exits 1 when a step
fails.
"""
import base64
import importlib.metadata
import json
import os
import sys
import time
import traceback

import hvac
from hvac.adapters import RawAdapter
from hvac.exceptions import Forbidden, VaultError

WEST = os.environ["FERRY_DEMO_WEST_ADDR"]
EAST = os.environ["FERRY_DEMO_EAST_ADDR"]
WEST_TOKEN = os.environ["FERRY_DEMO_WEST_TOKEN"]
EAST_TOKEN = os.environ["FERRY_DEMO_EAST_TOKEN"]
CACERT = os.environ["FERRY_DEMO_CACERT"]

west = hvac.Client(url=WEST, token=WEST_TOKEN, verify=CACERT)
east = hvac.Client(url=EAST, token=EAST_TOKEN, verify=CACERT)
# The same client with hvac's RawAdapter: the HTTP response itself, to show its headers.
east_raw = hvac.Client(url=EAST, token=EAST_TOKEN, adapter=RawAdapter, verify=CACERT)

# How long a write on the primary may take to be readable on the secondary.
REPLICATION_TIMEOUT_S = 30


class StepFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise StepFailed(message)


def show(label, value):
    if not isinstance(value, str):
        value = json.dumps(value, sort_keys=True)
    print(f"      {label}: {value}")


def b64(text):
    return base64.b64encode(text.encode()).decode()


def kv_read(client, path):
    return client.secrets.kv.v2.read_secret_version(path=path, raise_on_deleted_version=True)["data"]


def step_replicated_read():
    """A secret written on the primary (west) is read on the secondary (east)"""
    secret = {"username": "app", "password": "correct horse battery staple"}
    written = west.secrets.kv.v2.create_or_update_secret(path="demo/db", secret=secret)["data"]
    show("west: wrote secret/demo/db", f"version {written['version']}")
    started = time.monotonic()
    deadline = started + REPLICATION_TIMEOUT_S
    while True:
        try:
            read = kv_read(east, "demo/db")
            break
        except VaultError as e:
            if time.monotonic() > deadline:
                raise StepFailed(f"east did not serve secret/demo/db in {REPLICATION_TIMEOUT_S}s: {e}")
            time.sleep(0.1)
    show("east: read secret/demo/db", read["data"])
    show("replicated within", f"{time.monotonic() - started:.2f}s")
    check(read["data"] == secret, f"east read {read['data']}, west wrote {secret}")
    check(read["metadata"]["version"] == written["version"], f"versions differ: {read['metadata']}")


def step_forwarded_write():
    """A write through the secondary (east) is forwarded to the primary (west)"""
    secret = {"new_checkout": "on"}
    response = east_raw.secrets.kv.v2.create_or_update_secret(path="demo/flags", secret=secret)
    body = response.json()
    show("east: wrote secret/demo/flags", f"HTTP {response.status_code}, version {body['data']['version']}")
    show("  X-Vault-Index (the primary's WAL state)", response.headers.get("X-Vault-Index", "(none)"))
    show("  warnings", body.get("warnings"))
    check(response.status_code == 200, f"HTTP {response.status_code}: {body}")
    check("X-Vault-Index" in response.headers, "a forwarded write carries X-Vault-Index")
    on_west = kv_read(west, "demo/flags")
    show("west: read secret/demo/flags", on_west["data"])
    check(on_west["data"] == secret, f"west holds {on_west['data']}")
    on_east = kv_read(east, "demo/flags")
    show("east: read it back at once (read-after-write)", on_east["data"])
    check(on_east["data"] == secret, f"east holds {on_east['data']}")


def step_local_tokens():
    """Tokens are local to their cluster: a token of one is refused by the other (403)"""
    created = west.auth.token.create(policies=["default"], ttl="15m", display_name="demo")["auth"]
    show("west: created a token", f"accessor {created['accessor']}, policies {created['policies']}")
    on_west = hvac.Client(url=WEST, token=created["client_token"], verify=CACERT).auth.token.lookup_self()["data"]
    show("west: lookup-self with it", f"accepted ({on_west['display_name']})")
    for name, url, token in [("east", EAST, created["client_token"]), ("west", WEST, EAST_TOKEN)]:
        what = "west's new token" if name == "east" else "east's root token"
        try:
            hvac.Client(url=url, token=token, verify=CACERT).auth.token.lookup_self()
            raise StepFailed(f"{name} accepted {what}")
        except Forbidden as e:
            show(f"{name}: lookup-self with {what}", f"refused: 403 {'; '.join(e.errors or [str(e)])}")


def step_transit():
    """Transit on the secondary: key created (forwarded), encrypt on east, decrypt on west"""
    east.secrets.transit.create_key(name="demo-payments")
    key = east.secrets.transit.read_key(name="demo-payments")["data"]
    show("east: created transit/keys/demo-payments (forwarded)", f"type {key['type']}, version {key['latest_version']}")
    plaintext = "card 4111 1111 1111 1111"
    response = east_raw.secrets.transit.encrypt_data(name="demo-payments", plaintext=b64(plaintext))
    ciphertext = response.json()["data"]["ciphertext"]
    show("east: encrypted", ciphertext)
    check(response.status_code == 200, f"HTTP {response.status_code}")
    check("X-Vault-Index" not in response.headers, "encryption was forwarded: it should be served locally")
    show("  served locally", "no X-Vault-Index: nothing was written")
    opened = west.secrets.transit.decrypt_data(name="demo-payments", ciphertext=ciphertext)["data"]
    decrypted = base64.b64decode(opened["plaintext"]).decode()
    show("west: decrypted", decrypted)
    check(decrypted == plaintext, f"decrypted {decrypted!r}")


def step_status():
    """Replication status (sys/replication/status, unauthenticated)"""
    modes = {}
    for name, url in [("west", WEST), ("east", EAST)]:
        perf = hvac.Client(url=url, verify=CACERT).read("sys/replication/status")["data"]["performance"]
        modes[name] = perf
        summary = {k: perf.get(k) for k in ("mode", "state", "last_wal", "last_remote_wal")}
        show(name, " ".join(f"{k}={v}" for k, v in summary.items() if v is not None))
    check(modes["west"].get("mode") == "primary", f"west: {modes['west']}")
    check(modes["east"].get("mode") == "secondary", f"east: {modes['east']}")
    check(modes["east"].get("state") == "stream-wals", f"east: {modes['east']}")


STEPS = [step_replicated_read, step_forwarded_write, step_local_tokens, step_transit, step_status]


def main():
    version = importlib.metadata.version("hvac")
    print(f"Tour: hvac {version} (from PyPI, unmodified) against west {WEST} (primary) and east {EAST} (secondary)")
    failed = []
    for n, step in enumerate(STEPS, 1):
        print(f"  [{n}/{len(STEPS)}] {step.__doc__}")
        try:
            step()
            print("      ok")
        except Exception as e:  # noqa: BLE001: every failure is the step's, reported and counted
            print(f"      FAILED: {type(e).__name__}: {e}")
            if not isinstance(e, StepFailed):
                traceback.print_exc(file=sys.stdout)
            failed.append(n)
    if failed:
        print(f"tour: {len(failed)} of {len(STEPS)} steps failed: {', '.join(map(str, failed))}")
        return 1
    print(f"tour: all {len(STEPS)} steps passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
