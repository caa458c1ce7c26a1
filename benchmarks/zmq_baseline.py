"""Raw pyzmq baseline for the bulk-data workload: the same buffer sent to another
process over loopback TCP and echoed back (DEALER -> ROUTER -> DEALER), with
no framework on top.  The round-trip time is the floor that a push followed by
a pull of the same array can approach.

``python zmq_baseline.py --sizes 1,100 --repeats 30,4`` prints one JSON object:
``{"zmq_roundtrip_<N>mb_s": median seconds, "zmq_roundtrip_<N>mb_mb_per_s": ...}``.
``python zmq_baseline.py --echo`` is the echo process (started by the former).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import zmq

STOP = b"stop"
TIMEOUT_MS = 120_000


def echo() -> None:
    """Bind on a random loopback port, print it, echo every message until STOP."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    print(port, flush=True)
    while True:
        identity, payload = router.recv_multipart(copy=False)
        router.send_multipart([identity, payload], copy=False)
        if payload.bytes == STOP:
            break
    router.close()
    context.term()


def measure(sizes_mb: list[int], repeats: list[int]) -> dict[str, float]:
    server = subprocess.Popen([sys.executable, __file__, "--echo"], stdout=subprocess.PIPE, text=True)
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVTIMEO, TIMEOUT_MS)
    try:
        port = int(server.stdout.readline())
        dealer.connect(f"tcp://127.0.0.1:{port}")
        metrics: dict[str, float] = {}
        for mb, count in zip(sizes_mb, repeats, strict=True):
            buffer = bytearray(mb * 1_000_000)
            dealer.send(buffer, copy=False)  # warm up the connection
            dealer.recv(copy=False)
            times = []
            for _ in range(count):
                began = time.perf_counter()
                dealer.send(buffer, copy=False)
                back = dealer.recv(copy=False)
                times.append(time.perf_counter() - began)
                if len(back.buffer) != len(buffer):
                    raise RuntimeError("echo returned a different size")
                del back
            seconds = statistics.median(times)
            metrics[f"zmq_roundtrip_{mb}mb_s"] = seconds
            metrics[f"zmq_roundtrip_{mb}mb_mb_per_s"] = 2 * mb / seconds
        dealer.send(STOP)
        dealer.recv()
        return metrics
    finally:
        dealer.close()
        context.term()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--echo", action="store_true", help="run as the echo process")
    parser.add_argument("--sizes", default="1,100", help="buffer sizes in MB, comma separated")
    parser.add_argument("--repeats", default="30,4", help="round trips per size, comma separated")
    args = parser.parse_args(argv)
    if args.echo:
        echo()
        return 0
    sizes = [int(part) for part in args.sizes.split(",")]
    repeats = [int(part) for part in args.repeats.split(",")]
    if len(sizes) != len(repeats):
        parser.error("--sizes and --repeats need the same number of entries")
    print(json.dumps(measure(sizes, repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
