"""An independent gRPC client for Meridian: Python grpcio with stubs generated
from proto/meridian/v1/meridian.proto at run time (nothing of Meridian's own
code). Lists the services through server reflection, checks health, then does
a Put and a Get, over TLS verified against the cluster CA, presenting a
client certificate (mutual TLS). Usage:
grpc_check.py HOST:PORT PROTO_ROOT CA_PEM CLIENT_CERT_PEM CLIENT_KEY_PEM"""

import importlib
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def main() -> int:
    addr, proto_root, ca, cert, key = sys.argv[1:6]
    out = tempfile.mkdtemp()
    rc = protoc.main([
        "protoc", f"-I{proto_root}", f"--python_out={out}", f"--grpc_python_out={out}",
        os.path.join(proto_root, "meridian/v1/meridian.proto"),
    ])
    if rc != 0:
        print(f"protoc failed: {rc}")
        return 1
    sys.path.insert(0, out)
    pb = importlib.import_module("meridian.v1.meridian_pb2")
    pb_grpc = importlib.import_module("meridian.v1.meridian_pb2_grpc")

    def read(p):
        with open(p, "rb") as f:
            return f.read()

    creds = grpc.ssl_channel_credentials(
        root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert))
    ch = grpc.secure_channel(addr, creds)
    grpc.channel_ready_future(ch).result(timeout=10)

    refl = reflection_pb2_grpc.ServerReflectionStub(ch)
    resp = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    services = sorted(s.name for s in resp.list_services_response.service)
    print("services:", " ".join(services))
    for want in ("meridian.v1.Kv", "meridian.v1.Admin", "grpc.health.v1.Health"):
        if want not in services:
            print(f"missing service {want}")
            return 1

    kv = pb_grpc.KvStub(ch)
    put = kv.Put(pb.PutRequest(namespace="eu", key="py/flag", value=b"from-python"), timeout=10)
    print("put:", "succeeded" if put.succeeded else "conflict", "revision", put.token.revision)
    got = kv.Get(pb.GetRequest(namespace="eu", key="py/flag"), timeout=10)
    print("get:", got.found, got.kv.value.decode())
    if not (put.succeeded and got.found and got.kv.value == b"from-python"):
        return 1
    try:
        kv.Get(pb.GetRequest(namespace="nope", key="k"), timeout=10)
        print("unknown namespace did not fail")
        return 1
    except grpc.RpcError as e:
        reason = dict(e.trailing_metadata() or ()).get("meridian-reason")
        print("error:", e.code().name, reason, e.details())
        if e.code() != grpc.StatusCode.NOT_FOUND or reason != "UNKNOWN_NAMESPACE":
            return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
