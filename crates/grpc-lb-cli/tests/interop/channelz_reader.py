"""Reads a process's channelz with grpcio's generated client (gRPC C-core) and
prints it as one JSON document: channels with their subchannels and sockets, and
servers. Paging is followed with a small page size.

Usage: channelz_reader.py HOST:PORT
"""

import json
import sys

import grpc
from google.protobuf import json_format
from grpc_channelz.v1 import channelz_pb2, channelz_pb2_grpc


def main():
    address = sys.argv[1]
    with grpc.insecure_channel(address) as channel:
        stub = channelz_pb2_grpc.ChannelzStub(channel)
        out = {"channels": [], "servers": []}
        start = 0
        while True:
            page = stub.GetTopChannels(
                channelz_pb2.GetTopChannelsRequest(start_channel_id=start, max_results=1),
                timeout=10,
            )
            for c in page.channel:
                entry = json_format.MessageToDict(c, preserving_proto_field_name=True)
                entry["subchannels"] = []
                for ref in c.subchannel_ref:
                    sub = stub.GetSubchannel(
                        channelz_pb2.GetSubchannelRequest(subchannel_id=ref.subchannel_id),
                        timeout=10,
                    ).subchannel
                    sub_entry = json_format.MessageToDict(sub, preserving_proto_field_name=True)
                    sub_entry["sockets"] = [
                        json_format.MessageToDict(
                            stub.GetSocket(
                                channelz_pb2.GetSocketRequest(socket_id=s.socket_id),
                                timeout=10,
                            ).socket,
                            preserving_proto_field_name=True,
                        )
                        for s in sub.socket_ref
                    ]
                    entry["subchannels"].append(sub_entry)
                out["channels"].append(entry)
                start = max(start, c.ref.channel_id + 1)
            if page.end or not page.channel:
                break
        servers = stub.GetServers(channelz_pb2.GetServersRequest(start_server_id=0), timeout=10)
        for s in servers.server:
            out["servers"].append(json_format.MessageToDict(s, preserving_proto_field_name=True))
        print(json.dumps(out))


if __name__ == "__main__":
    main()
