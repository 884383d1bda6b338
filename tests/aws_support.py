"""AWS stand-ins on 127.0.0.1 for tests: moto in server mode (Secrets Manager, SSM, IAM) and a
tiny stub for what moto cannot express (an expired token, a slow endpoint).

moto is a real, independent implementation of those APIs: with IAM enforcement on
(``enforce_iam()``) it also recomputes every SigV4 signature and checks the caller's policies, so
a request we sign wrongly fails there with ``SignatureDoesNotMatch`` and a missing permission
with ``AccessDenied``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List, Optional, Tuple

REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's default account


class Moto:
    """One moto server for a test class. Its state is process-wide: use unique names."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        import botocore.session

        session = botocore.session.get_session()
        kw = dict(region_name=REGION, endpoint_url=self.url, aws_access_key_id="admin", aws_secret_access_key="admin")
        self.secretsmanager = session.create_client("secretsmanager", **kw)
        self.ssm = session.create_client("ssm", **kw)
        self.iam = session.create_client("iam", **kw)
        self.logs = session.create_client("logs", **kw)

    def stop(self) -> None:
        self.relax_iam()
        self._server.stop()

    def secret(self, name: str, value: str) -> str:
        return self.secretsmanager.create_secret(Name=name, SecretString=value)["ARN"]

    def parameter(self, name: str, value: str, kind: str = "SecureString") -> str:
        self.ssm.put_parameter(Name=name, Value=value, Type=kind)
        return f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/{name.lstrip('/')}"

    def user(self, name: str, actions: List[str]) -> Tuple[str, str]:
        """An IAM user allowed ``actions`` on every resource; returns (access key id, secret key)."""
        self.iam.create_user(UserName=name)
        if actions:
            policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
            self.iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
        key = self.iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def enforce_iam(self) -> None:
        """From now on every request is authenticated (signature) and authorised (policies)."""
        self._reset_auth(b"0")

    def relax_iam(self) -> None:
        self._reset_auth(b"inf")

    def _reset_auth(self, data: bytes) -> None:
        req = urllib.request.Request(self.url + "/moto-api/reset-auth", data=data, method="POST",
                                     headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()


class StubAws:
    """A 127.0.0.1 HTTP server answering AWS JSON-protocol requests with a function of the request.

    ``answer(headers, body) -> (status, json_body)``; ``delay`` seconds before answering (released
    by ``stop()``). Records (target, headers) of every request.
    """

    def __init__(self, answer: Callable[[Dict[str, str], bytes], Tuple[int, dict]], delay: float = 0.0) -> None:
        self.answer = answer
        self.delay = delay
        self.requests: List[Dict[str, str]] = []
        self._stopping = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.requests.append(headers)
                if outer.delay and outer._stopping.wait(outer.delay):
                    return
                status, doc = outer.answer(headers, body)
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()


def encodings(value: str) -> Dict[str, str]:
    """Ways a leaked secret could be written: as is, base64, hex, percent-encoded, JSON-escaped."""
    import base64
    from urllib.parse import quote

    raw = value.encode()
    return {
        "plain": value,
        "base64": base64.b64encode(raw).decode(),
        "base64url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
        "percent": quote(value, safe=""),
        "json": json.dumps(value)[1:-1],
    }


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def optional(value: Optional[str]) -> str:
    return value or ""


class SigV4Verifier:
    """Checks every request's SigV4 signature as an AWS endpoint would, recomputed with botocore
    (an implementation independent of ours), over exactly the bytes received.

    ``keys`` maps access key ids to (secret key, session token or None); ``services`` maps a
    request path to the service expected in the credential scope. Refuses: no or malformed
    Authorization, unknown key, wrong region/service/date in the scope, X-Amz-Date off by more
    than ``max_skew_s``, a session token that is missing, wrong or unsigned, an ``x-amz-*`` /
    ``x-aws-*`` / content header that is not signed, and of course a signature that differs.
    Use as ``OtlpSink(verify=verifier)``; ``verified`` counts the requests that passed.
    """

    ALWAYS_SIGNED = ("host", "x-amz-date", "content-type")

    def __init__(self, keys: Dict[str, Tuple[str, Optional[str]]], region: str, services: Dict[str, str],
                 max_skew_s: float = 300.0) -> None:
        self.keys = keys
        self.region = region
        self.services = services
        self.max_skew_s = max_skew_s
        self.verified = 0
        self.refused: List[str] = []
        self._lock = threading.Lock()

    def __call__(self, method: str, path: str, headers: Dict[str, str], body: bytes) -> Optional[str]:
        problem = self._check(method, path, headers, body)
        with self._lock:
            if problem is None:
                self.verified += 1
            else:
                self.refused.append(problem)
        return problem

    def _check(self, method: str, path: str, headers: Dict[str, str], body: bytes) -> Optional[str]:
        import calendar
        import hmac as _hmac

        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials as BotoCredentials

        auth = headers.get("authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            return "no SigV4 Authorization header"
        fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 "):].split(",") if "=" in part)
        try:
            key_id, date, region, service, terminator = fields["Credential"].split("/")
            signed = fields["SignedHeaders"].split(";")
            signature = fields["Signature"]
        except (KeyError, ValueError):
            return "malformed Authorization header"
        if key_id not in self.keys:
            return f"unknown access key {key_id}"
        secret, token = self.keys[key_id]
        expected_service = self.services.get(path.split("?", 1)[0])
        if (region, service, terminator) != (self.region, expected_service, "aws4_request"):
            return f"credential scope {region}/{service} is not {self.region}/{expected_service}"
        amz_date = headers.get("x-amz-date", "")
        if amz_date[:8] != date:
            return "X-Amz-Date does not match the credential scope's date"
        try:
            when = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
        except ValueError:
            return "X-Amz-Date is malformed"
        if abs(time.time() - when) > self.max_skew_s:
            return "X-Amz-Date is too far from now (RequestTimeTooSkewed)"
        if token is not None and (headers.get("x-amz-security-token") != token or "x-amz-security-token" not in signed):
            return "missing, wrong or unsigned X-Amz-Security-Token"
        must_sign = set(self.ALWAYS_SIGNED) | {
            h for h in headers if h.startswith(("x-amz-", "x-aws-", "content-encoding"))}
        unsigned = sorted(must_sign - set(signed))
        if unsigned:
            return f"headers not signed: {', '.join(unsigned)}"
        if any(h not in headers for h in signed):
            return "a signed header is missing from the request"
        request = AWSRequest(method=method, url=f"http://{headers['host']}{path}", data=body,
                             headers={h: headers[h] for h in signed})
        request.context["timestamp"] = amz_date
        signer = SigV4Auth(BotoCredentials(key_id, secret, token), service, region)
        expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
        if not _hmac.compare_digest(expected, signature):
            return "SignatureDoesNotMatch"
        return None
