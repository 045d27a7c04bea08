"""The "empty call" ceiling: a gRPC server on the same stack (grpc.aio, uvloop, N workers
sharing one port) that answers FeatureStore calls with canned responses of the real size.

It does no feature work at all, so the feature store can at best match it.
Usage: python bench/ceiling_server.py CANNED_FILE PORT WORKERS
"""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
import signal
import sys
from pathlib import Path

import grpc
import uvloop

SERVICE = "inferstack.featurestore.v1.FeatureStore"


async def serve(canned: dict[bytes, bytes], port: int) -> None:
    async def answer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return canned[request]

    handler = grpc.unary_unary_rpc_method_handler(answer)  # bytes in, bytes out: no parsing
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 1), ("grpc.max_send_message_length", 64 << 20)]
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE, {"RetrieveBatch": handler, "Retrieve": handler}
            )
        ]
    )
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
