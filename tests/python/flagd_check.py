"""OpenFeature's Python SDK with flagd's provider (both from PyPI, not written
here) against a Meridian region's flagd services: `in-process` downloads the
flags through flagd.sync.v1 and evaluates locally (pushed every change);
`rpc` asks flagd.evaluation.v1.

Usage: flagd_check.py MODE HOST:PORT TOKEN NAMESPACE CA_PEM (TOKEN "-": none)
stdin line 1: a JSON array of requests ({"type", "key", "default",
"targetingKey"?, "attrs"?}); prints a JSON array of the SDK's details.
stdin line 2 (optional): {"type", "key", "default", "expect"}: evaluates
until the value is `expect` (a change pushed), prints {"arrived_ms": n}.
"""
import json
import logging
import sys
import time

import grpc
from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import CacheType, ResolverType
from openfeature.evaluation_context import EvaluationContext


def details(client, r):
    ctx = EvaluationContext(r.get("targetingKey"), r.get("attrs", {}))
    get = {
        "boolean": client.get_boolean_details,
        "string": client.get_string_details,
        "integer": client.get_integer_details,
        "float": client.get_float_details,
        "object": client.get_object_details,
    }[r["type"]]
    return get(r["key"], r["default"], ctx)


def main():
    # The provider's own log goes to stderr, which the test shows on failure.
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    mode, addr, token, ns, ca = sys.argv[1:6]
    host, port = addr.rsplit(":", 1)
    # TOKEN "-": no credential (a cluster without auth). flagd's RPC
    # resolver (0.5.2) takes no call credentials, only a CA (cert_path).
    creds = None
    if token != "-":
        with open(ca, "rb") as f:
            creds = grpc.composite_channel_credentials(
                grpc.ssl_channel_credentials(f.read()),
                grpc.access_token_call_credentials(token),
            )
    resolver = ResolverType.IN_PROCESS if mode == "in-process" else ResolverType.RPC
    provider = FlagdProvider(
        resolver_type=resolver,
        host=host,
        port=int(port),
        tls=True,
        selector=ns,
        channel_credentials=creds,
        cert_path=ca,
        deadline_ms=5000,
        cache=CacheType.DISABLED,
    )
    # Raises if the provider cannot get ready (sync or event stream refused).
    api.set_provider_and_wait(provider)
    client = api.get_client()
    out = []
    for r in json.loads(sys.stdin.readline()):
        d = details(client, r)
        out.append({
            "value": d.value,
            "variant": d.variant,
            "reason": str(d.reason.value if hasattr(d.reason, "value") else d.reason),
            "error_code": d.error_code.value if d.error_code else None,
        })
    print(json.dumps(out), flush=True)
    line = sys.stdin.readline()
    if line.strip():
        w = json.loads(line)
        start = time.monotonic()
        while time.monotonic() - start < 10:
            if details(client, w).value == w["expect"]:
                print(json.dumps({"arrived_ms": int((time.monotonic() - start) * 1000)}), flush=True)
                break
            time.sleep(0.005)
        else:
            print(json.dumps({"arrived_ms": None}), flush=True)
    api.shutdown()


if __name__ == "__main__":
    main()
