"""The "empty call" ceiling: the same gRPC stack as `inferstack serve` (grpc.aio, uvloop,
the generated FeatureStore messages, N workers sharing one port) answering RetrieveBatch
with a prebuilt response of the real size for the request's shape.

gRPC still parses each request and serialises each response, exactly as for the real
server; the only thing missing is the feature store's own work, so it is what the feature
store could reach at best.
Usage: python bench/ceiling_server.py CANNED_FILE PORT WORKERS
"""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
import uvloop

from inferstack.proto.featurestore.v1 import featurestore_pb2 as pb
from inferstack.proto.featurestore.v1 import featurestore_pb2_grpc as pb_grpc


def shape_of(request: pb.RetrieveBatchRequest) -> tuple[int, int]:
    """Requests of one benchmark shape have the same number of queries and keys."""
    last = request.requests[-1]
    keys = sum(len(k.int64_values) + len(k.string_values) for k in last.keys)
    return len(request.requests), keys


class EmptyFeatureStore(pb_grpc.FeatureStoreServicer):  # type: ignore[misc]  # generated
    def __init__(self, canned: dict[tuple[int, int], pb.RetrieveBatchResponse]) -> None:
        self.canned = canned

    async def RetrieveBatch(  # noqa: N802 (gRPC method name)
        self, request: pb.RetrieveBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RetrieveBatchResponse:
        return self.canned[shape_of(request)]


async def serve(canned_bytes: dict[bytes, bytes], port: int) -> None:
    canned = {
        shape_of(pb.RetrieveBatchRequest.FromString(request)): pb.RetrieveBatchResponse.FromString(
            response
        )
        for request, response in canned_bytes.items()
    }
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 1), ("grpc.max_send_message_length", 64 << 20)]
    )
    pb_grpc.add_FeatureStoreServicer_to_server(EmptyFeatureStore(canned), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


def worker(canned_file: str, port: int) -> None:
    canned = pickle.loads(Path(canned_file).read_bytes())
    uvloop.run(serve(canned, port))


def main() -> None:
    canned_file, port, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    processes = [
        multiprocessing.Process(target=worker, args=(canned_file, port)) for _ in range(workers)
    ]
    for process in processes:
        process.start()

    def stop(signum: int, frame: object) -> None:
        for process in processes:
            process.terminate()

    signal.signal(signal.SIGTERM, stop)
    for process in processes:
        process.join()


if __name__ == "__main__":
    main()
