"""OpenFeature's Python SDK with its OFREP provider (both from PyPI, not
written here) evaluating Meridian's flags over the HTTP API.

Usage: ofrep_check.py BASE_URL TOKEN NAMESPACE < requests.json
NAMESPACE "" means BASE_URL already names it (/ns/{project}/{env}).
Each request: {"type": boolean|string|integer|float|object, "key",
"default", "targetingKey"?, "attrs"?}. Prints one JSON array of the SDK's
evaluation details (value, variant, reason, error_code).
The cluster's CA comes from REQUESTS_CA_BUNDLE.
"""
import json
import sys

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext


def main():
    base, token, ns = sys.argv[1], sys.argv[2], sys.argv[3]
    headers = {"Authorization": f"Bearer {token}"}
    if ns:
        headers["X-Meridian-Namespace"] = ns
    api.set_provider(OFREPProvider(base, headers_factory=lambda: dict(headers)))
    client = api.get_client()
    out = []
    for r in json.load(sys.stdin):
        ctx = EvaluationContext(r.get("targetingKey"), r.get("attrs", {}))
        get = {
            "boolean": client.get_boolean_details,
            "string": client.get_string_details,
            "integer": client.get_integer_details,
            "float": client.get_float_details,
            "object": client.get_object_details,
        }[r["type"]]
        d = get(r["key"], r["default"], ctx)
        out.append({
            "value": d.value,
            "variant": d.variant,
            "reason": str(d.reason.value if hasattr(d.reason, "value") else d.reason),
            "error_code": d.error_code.value if d.error_code else None,
        })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
