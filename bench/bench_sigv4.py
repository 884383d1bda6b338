"""What SigV4 signing adds to an export request, side by side with what the request costs anyway.

    .venv/bin/python -m bench.bench_sigv4            # ~20 s
    .venv/bin/python -m bench.bench_sigv4 --quick    # a smoke run, not a measurement

For realistic export bodies (serialised ExportLogsServiceRequest of ~64 KB, ~1 MB and ~4 MB) it
times, in interleaved rounds (so machine noise hits every column alike), the CPU of:
gzip level 1 (what every export pays), our SigV4 signature over the gzipped bytes, and botocore's
signature of the same request (the baseline a collector-side SDK would pay). Median per request.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _body(target_bytes: int) -> bytes:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    msg = ExportLogsServiceRequest()
    records = msg.resource_logs.add().scope_logs.add().log_records
    i = 0
    while msg.ByteSize() < target_bytes:
        for _ in range(200):
            rec = records.add()
            rec.time_unix_nano = 1_764_633_600_000_000_000 + i
            rec.body.string_value = f"START RequestId: {i:08x}-aaaa-bbbb-cccc-{i:012x} line {i} of a function log"
            i += 1
    return msg.SerializeToString()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    from lambda_otel.sigv4 import Credentials, SigV4Signer, StaticCredentials

    creds = Credentials("ASIABENCHKEY", "bench/secret", "bench-session-token")
    ours = SigV4Signer(StaticCredentials(creds), "eu-west-1", "logs")
    boto = SigV4Auth(BotoCredentials(creds.access_key_id, creds.secret_access_key, creds.session_token), "logs",
                     "eu-west-1")
    url = "https://logs.eu-west-1.amazonaws.com/v1/logs"
    headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip",
               "x-aws-log-group": "/aws/lambda/bench", "x-aws-log-stream": "lambda-otel"}
    rounds = 3 if args.quick else 25
    sizes = (64 * 1024,) if args.quick else (64 * 1024, 1024 * 1024, 4 * 1024 * 1024)

    print(f"{'body':>10} {'gzip -1':>12} {'SigV4 (ours)':>14} {'SigV4 (botocore)':>17} {'ours/gzip':>10}")
    for size in sizes:
        body = _body(size)
        payload = gzip.compress(body, 1)
        t_gzip, t_ours, t_boto = [], [], []
        for _ in range(rounds):
            t0 = time.process_time()
            gzip.compress(body, 1)
            t1 = time.process_time()
            ours.sign("POST", url, headers, payload)
            t2 = time.process_time()
            req = AWSRequest(method="POST", url=url, data=payload, headers=dict(headers))
            boto.add_auth(req)
            t3 = time.process_time()
            t_gzip.append(t1 - t0)
            t_ours.append(t2 - t1)
            t_boto.append(t3 - t2)
        g, o, b = (statistics.median(t) * 1000 for t in (t_gzip, t_ours, t_boto))
        print(f"{len(body) / 1024:>8.0f} K {g:>10.2f} ms {o:>12.3f} ms {b:>15.3f} ms {o / g:>9.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
