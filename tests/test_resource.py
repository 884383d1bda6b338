"""The resource: built from config, updated in place by a Managed Instances initStart, renewed at a
SnapStart restore (two forks of one process = two restores of one snapshot)."""

import json
import os
import unittest

from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from lambda_otel import loss as L
from lambda_otel.config import load_config
from lambda_otel.convert import TelemetryConverter
from lambda_otel.metrics import MetricsState
from lambda_otel.resource import build_resource, instance_attributes, renew_after_restore, to_proto, update_resource

ENV = {"AWS_LAMBDA_FUNCTION_NAME": "fn", "AWS_LAMBDA_FUNCTION_VERSION": "7", "AWS_REGION": "eu-west-1",
       "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256", "AWS_LAMBDA_LOG_STREAM_NAME": "2026/12/01/[7]abc"}


def as_dict(resource: Resource) -> dict:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in resource.attributes}


class BuildTest(unittest.TestCase):
    def test_from_config(self):
        attrs = build_resource({}, load_config(ENV), account_id="123456789012")
        self.assertEqual(attrs["faas.name"], "fn")
        self.assertEqual(attrs["service.name"], "fn")
        self.assertEqual(attrs["faas.version"], "7")
        self.assertEqual(attrs["cloud.region"], "eu-west-1")
        self.assertEqual(attrs["cloud.account.id"], "123456789012")
        self.assertEqual(attrs["faas.max_memory"], 256 * 1024 * 1024)
        self.assertEqual(attrs["faas.instance"], "2026/12/01/[7]abc")

    def test_no_memory_is_invented(self):
        self.assertNotIn("faas.max_memory", build_resource({}, load_config({})))

    def test_without_a_log_stream_the_instance_is_random(self):
        a, b = (build_resource({}, load_config({}))["faas.instance"] for _ in range(2))
        self.assertNotEqual(a, b)


class ManagedInstancesTest(unittest.TestCase):
    def test_instance_attributes(self):
        lmi = {"initializationType": "lambda-managed-instances"}
        self.assertEqual(instance_attributes({**lmi, "instanceId": "i-0abc", "instanceMaxMemory": 2147483648}),
                         {"faas.instance": "i-0abc", "faas.max_memory": 2147483648})
        self.assertEqual(instance_attributes({**lmi, "instanceMaxMemory": 2048}), {"faas.max_memory": 2048 * 1024 * 1024})
        for bad in ({"instanceId": 5, "instanceMaxMemory": "2 GB"}, {"instanceMaxMemory": True},
                    {"instanceMaxMemory": -1}, {"instanceMaxMemory": 2**64}, {"instanceId": "  "}, {}):
            with self.subTest(bad=bad):
                self.assertEqual(instance_attributes({**lmi, **bad}), {})

    def test_elsewhere_the_log_stream_stays_the_instance(self):
        # A 2025-01-29 initStart may name an instance on-demand too: the function's own resource
        # detector reports the log stream name, so do we; and the series must not split mid-life.
        for kind in ("on-demand", "provisioned-concurrency", "snap-start", None):
            with self.subTest(kind=kind):
                self.assertEqual(instance_attributes({"initializationType": kind, "instanceId": "i-1",
                                                      "instanceMaxMemory": 2147483648}), {})

    def test_init_start_updates_the_shared_resource_everything_exports(self):
        attrs = build_resource({}, load_config({**ENV, "AWS_LAMBDA_INITIALIZATION_TYPE": "lambda-managed-instances"}))
        resource = to_proto(attrs)
        loss = L.LossCounter()
        metrics = MetricsState(resource, "cumulative", loss)
        conv = TelemetryConverter(resource, metrics, loss)
        conv.process([{"time": "2026-12-01T10:00:00.000Z", "type": "platform.initStart", "record": {
            "initializationType": "lambda-managed-instances", "phase": "init", "runtimeVersion": "python:3.13",
            "functionName": "fn", "functionVersion": "7", "instanceId": "i-0abc", "instanceMaxMemory": 4294967296}}])
        out = conv.process([{"time": "2026-12-01T10:00:01.000Z", "type": "platform.report", "record": {
            "requestId": "r-1", "status": "success", "metrics": {"durationMs": 5.0}}}])
        exported = [as_dict(metrics.collect().resource)]
        if out.resource_spans is not None:
            exported.append(as_dict(out.resource_spans.resource))
        for res in exported:
            self.assertEqual(res["faas.instance"], "i-0abc")
            self.assertEqual(res["faas.max_memory"], 4294967296)
            self.assertEqual(res["faas.name"], "fn")

    def test_update_in_place(self):
        attrs = {"a": "x", "faas.instance": "old"}
        resource = to_proto(attrs)
        update_resource(resource, {"faas.instance": "new", "n": 5}, attrs)
        self.assertEqual(as_dict(resource), {"a": "x", "faas.instance": "new", "n": 5})
        self.assertEqual(attrs, {"a": "x", "faas.instance": "new", "n": 5})


class RestoreTest(unittest.TestCase):
    def test_two_forks_of_one_snapshot_get_different_instances(self):
        attrs = build_resource({}, load_config(ENV))
        resource = to_proto(attrs)
        seen = []
        for _ in range(2):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # a restored copy
                try:
                    os.close(read)
                    renew_after_restore(attrs, resource)
                    os.write(write, json.dumps([attrs["faas.instance"], as_dict(resource)["faas.instance"]]).encode())
                finally:
                    os._exit(0)
            os.close(write)
            with os.fdopen(read) as fh:
                seen.append(json.loads(fh.read()))
            os.waitpid(pid, 0)
        (dict_a, proto_a), (dict_b, proto_b) = seen
        self.assertEqual(dict_a, proto_a)
        self.assertEqual(dict_b, proto_b)
        self.assertNotEqual(dict_a, dict_b)
        self.assertNotIn(ENV["AWS_LAMBDA_LOG_STREAM_NAME"], (dict_a, dict_b), "the snapshot's id is not kept")


if __name__ == "__main__":
    unittest.main()
