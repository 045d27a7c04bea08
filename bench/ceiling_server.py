"""The "empty call" ceiling: the same gRPC stack as `inferstack serve` (grpc.aio, uvloop,
the generated FeatureStore messages, N workers sharing one port) answering Retrieve and
RetrieveBatch with a recorded answer of the real size for the request's shape, and Persist
with the number of rows sent (all a real answer holds: nothing to record).

gRPC still parses each request and serialises each response, exactly as for the real
server; the only thing missing is the feature store's own work, so it is what the feature
store could reach at best.
Usage: python bench/ceiling_server.py ANSWERS_FILE PORT WORKERS
ANSWERS_FILE: a pickled {"batch": {request: response}, "single": {request: response}} of
serialised messages, recorded from the real server.
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

Shape = tuple[int, int]


def values_of(column: pb.KeyColumn) -> int:
    return len(column.int64_values) + len(column.uint64_values) + len(column.string_values)


def keys_of(request: pb.RetrieveRequest) -> int:
    return sum(values_of(k) for k in request.keys)


def shape_of(request: pb.RetrieveBatchRequest) -> Shape:
    """Requests of one benchmark shape have the same number of queries and keys."""
    return len(request.requests), keys_of(request.requests[-1])


class EmptyFeatureStore(pb_grpc.FeatureStoreServicer):  # type: ignore[misc]  # generated
    def __init__(
        self,
        batches: dict[Shape, pb.RetrieveBatchResponse],
        singles: dict[int, pb.RetrieveResponse],
    ) -> None:
        self.batches = batches
        self.singles = singles

    async def RetrieveBatch(  # noqa: N802 (gRPC method name)
        self, request: pb.RetrieveBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RetrieveBatchResponse:
        return self.batches[shape_of(request)]

    async def Retrieve(  # noqa: N802
        self, request: pb.RetrieveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RetrieveResponse:
        return self.singles[keys_of(request)]

    async def Persist(  # noqa: N802
        self, request: pb.PersistRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PersistResponse:
        return pb.PersistResponse(written=max((values_of(k) for k in request.keys), default=0))


async def serve(answers: dict[str, dict[bytes, bytes]], port: int) -> None:
    batches = {
        shape_of(pb.RetrieveBatchRequest.FromString(q)): pb.RetrieveBatchResponse.FromString(a)
        for q, a in answers["batch"].items()
    }
    singles = {
        keys_of(pb.RetrieveRequest.FromString(q)): pb.RetrieveResponse.FromString(a)
        for q, a in answers["single"].items()
    }
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 1), ("grpc.max_send_message_length", 64 << 20)]
    )
    pb_grpc.add_FeatureStoreServicer_to_server(EmptyFeatureStore(batches, singles), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


def worker(answers_file: str, port: int) -> None:
    answers = pickle.loads(Path(answers_file).read_bytes())
    uvloop.run(serve(answers, port))


def main() -> None:
    answers_file, port, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    processes = [
        multiprocessing.Process(target=worker, args=(answers_file, port)) for _ in range(workers)
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
