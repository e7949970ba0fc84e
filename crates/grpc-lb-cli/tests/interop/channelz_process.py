"""A gRPC C-core process (grpcio) that serves channelz and has a channel of its
own: its server serves grpc.channelz.v1, and its channel calls that server a few
times (GetTopChannels), so both have counts. Prints `PORT CALLS` on one line when
ready, then serves until stdin closes (or 120 s pass).

Usage: channelz_process.py
"""

import sys
import threading
from concurrent import futures

import grpc
from grpc_channelz.v1 import channelz, channelz_pb2, channelz_pb2_grpc

CALLS = 7


def main():
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[("grpc.enable_channelz", 1)],
    )
    channelz.add_channelz_servicer(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.enable_channelz", 1)]
    )
    stub = channelz_pb2_grpc.ChannelzStub(channel)
    for _ in range(CALLS):
        stub.GetTopChannels(channelz_pb2.GetTopChannelsRequest(), timeout=10)
    print(f"{port} {CALLS}", flush=True)
    done = threading.Event()

    def wait_stdin():
        sys.stdin.read()
        done.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    done.wait(timeout=120)
    channel.close()
    server.stop(grace=None)


if __name__ == "__main__":
    main()
