"""gRPC C-core's xDS client (grpcio) against our test ADS server.

Reads GRPC_XDS_BOOTSTRAP like any gRPC client, then for each line on stdin
("rpcs N") sends N unary echoes to xds:///echo and prints one JSON line: how many
each backend served. Ends at EOF or after 60 s. The echo messages are encoded by
hand (field 1: message; reply field 2: server), so no generated code is needed.
"""

import json
import os
import sys
import threading

import grpc


def encode_request(message: bytes) -> bytes:
    return bytes([0x0A, len(message)]) + message


def server_of(reply: bytes) -> str:
    i = 0
    while i < len(reply):
        key = reply[i]
        i += 1
        length = reply[i]
        i += 1
        value = reply[i : i + length]
        i += length
        if key == 0x12:
            return value.decode()
    return ""


def main() -> None:
    watchdog = threading.Timer(60, lambda: os._exit(1))
    watchdog.daemon = True
    watchdog.start()
    channel = grpc.insecure_channel("xds:///echo")
    echo = channel.unary_unary(
        "/echo.Echo/UnaryEcho",
        request_serializer=lambda m: m,
        response_deserializer=lambda b: b,
    )
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] != "rpcs":
            continue
        counts = {}
        for _ in range(int(parts[1])):
            try:
                reply = echo(encode_request(b"hi"), timeout=5, wait_for_ready=True)
                name = server_of(reply)
            except grpc.RpcError as e:
                name = "failed: " + str(e.code())
            counts[name] = counts.get(name, 0) + 1
        print(json.dumps(counts), flush=True)
    channel.close()
    os._exit(0)


if __name__ == "__main__":
    main()
