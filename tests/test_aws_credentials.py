"""Credentials from the environment and from the container credentials endpoint (SnapStart)."""

import json
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lambda_otel.aws_credentials import CredentialsError, EnvironmentCredentials


class CredentialsEndpoint:
    """A 127.0.0.1 stand-in for Lambda's container credentials endpoint."""

    def __init__(self, token="auth-token", expiration="2099-01-01T00:00:00Z", status=200):
        self.token, self.expiration, self.status = token, expiration, status
        self.calls = []
        self.serial = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.calls.append((self.path, self.headers.get("Authorization")))
                if self.headers.get("Authorization") != outer.token:
                    self.send_response(403)
                    self.end_headers()
                    return
                outer.serial += 1
                body = json.dumps({"AccessKeyId": f"ASIA{outer.serial}", "SecretAccessKey": "container-secret",
                                   "Token": "container-token", "Expiration": outer.expiration}).encode()
                self.send_response(outer.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}/2018-06-01/credentials"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class EnvironmentCredentialsTest(unittest.TestCase):
    def test_execution_role_variables(self):
        env = {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_SESSION_TOKEN": "token"}
        creds = EnvironmentCredentials(env).get()
        self.assertEqual((creds.access_key_id, creds.secret_access_key, creds.session_token), ("AKID", "secret", "token"))

    def test_refresh_rereads_the_environment(self):
        env = {"AWS_ACCESS_KEY_ID": "AKID1", "AWS_SECRET_ACCESS_KEY": "secret1"}
        provider = EnvironmentCredentials(env)
        self.assertEqual(provider.get().access_key_id, "AKID1")
        env.update(AWS_ACCESS_KEY_ID="AKID2", AWS_SECRET_ACCESS_KEY="secret2")
        self.assertEqual(provider.get().access_key_id, "AKID1", "cached until refresh()")
        provider.refresh()
        self.assertEqual(provider.get().access_key_id, "AKID2")

    def test_missing_credentials_name_the_variables(self):
        with self.assertRaises(CredentialsError) as ctx:
            EnvironmentCredentials({}).get()
        self.assertIn("AWS_ACCESS_KEY_ID", str(ctx.exception))
        self.assertIn("AWS_SECRET_ACCESS_KEY", str(ctx.exception))
        with self.assertRaises(CredentialsError) as ctx:
            EnvironmentCredentials({"AWS_ACCESS_KEY_ID": "AKID"}).get()
        self.assertIn("AWS_SECRET_ACCESS_KEY is not set", str(ctx.exception))

    def test_container_endpoint_as_snapstart_provides_it(self):
        endpoint = CredentialsEndpoint()
        self.addCleanup(endpoint.stop)
        env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": endpoint.url, "AWS_CONTAINER_AUTHORIZATION_TOKEN": "auth-token"}
        provider = EnvironmentCredentials(env)
        creds = provider.get()
        self.assertEqual((creds.access_key_id, creds.session_token), ("ASIA1", "container-token"))
        self.assertEqual(endpoint.calls, [("/2018-06-01/credentials", "auth-token")])
        provider.get()
        self.assertEqual(len(endpoint.calls), 1, "cached until close to the expiration")
        provider.refresh()
        self.assertEqual(provider.get().access_key_id, "ASIA2")

    def test_container_credentials_near_expiry_are_fetched_again(self):
        endpoint = CredentialsEndpoint(expiration="2026-01-01T00:10:00Z")
        self.addCleanup(endpoint.stop)
        now = [1767225600.0]  # 2026-01-01T00:00:00Z: 10 minutes left, renewed 5 minutes before
        env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": endpoint.url, "AWS_CONTAINER_AUTHORIZATION_TOKEN": "auth-token"}
        provider = EnvironmentCredentials(env, clock=lambda: now[0])
        self.assertEqual(provider.get().access_key_id, "ASIA1")
        now[0] += 240
        self.assertEqual(provider.get().access_key_id, "ASIA1")
        now[0] += 120
        self.assertEqual(provider.get().access_key_id, "ASIA2")

    def test_container_endpoint_errors_are_clear_and_secret_free(self):
        endpoint = CredentialsEndpoint()
        self.addCleanup(endpoint.stop)
        env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": endpoint.url, "AWS_CONTAINER_AUTHORIZATION_TOKEN": "wrong-token"}
        with self.assertRaises(CredentialsError) as ctx:
            EnvironmentCredentials(env).get()
        self.assertIn("AWS_CONTAINER_CREDENTIALS_FULL_URI", str(ctx.exception))
        self.assertIn("HTTP 403", str(ctx.exception))
        self.assertNotIn("wrong-token", str(ctx.exception))
        endpoint.stop()
        with self.assertRaises(CredentialsError) as ctx:
            EnvironmentCredentials(env, timeout_s=0.5).get()
        self.assertIn("did not answer", str(ctx.exception))


if __name__ == "__main__":
    unittest.main()
