"""Sampling decisions against the real OpenTelemetry SDK's samplers (test-only dependency).

The platform spans of an invocation must be exported exactly when the function's SDK exports its
own, so every decision is compared with what ``opentelemetry.sdk.trace.sampling`` decides for the
same environment variables, trace id and remote parent (the X-Ray header as the SDK's X-Ray
propagator extracts it).
"""

import os
import random
import unittest
from unittest import mock

from opentelemetry import trace
from opentelemetry.propagators.aws import AwsXRayPropagator
from opentelemetry.sdk.trace import sampling as sdk_sampling

from lambda_otel.config import load_config
from lambda_otel.sampling import TraceSampler, sampler_from_config


def sampler_from_env(env):
    return sampler_from_config(load_config(env))
from lambda_otel.xray import parse_xray_header


def sdk_decision(env, header: str) -> bool:
    """What the function's SDK decides for its SERVER span under this header."""
    with mock.patch.dict(os.environ, env, clear=False):
        for key in ("OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"):
            if key not in env:
                os.environ.pop(key, None)
        sampler = sdk_sampling._get_from_env_or_default()
    context = AwsXRayPropagator().extract({"X-Amzn-Trace-Id": header})
    parent = trace.get_current_span(context).get_span_context()
    trace_id = parent.trace_id if parent.is_valid else int(header.split(";")[0][len("Root=1-"):].replace("-", ""), 16)
    result = sampler.should_sample(context, trace_id, "fn", trace.SpanKind.SERVER)
    return result.decision.is_sampled()


def our_decision(env, header: str) -> bool:
    ctx = parse_xray_header(header)
    return sampler_from_env(env).should_sample(ctx.trace_id, ctx.remote_parent)


def header(rng: random.Random, parent: bool = True, sampled: str = "1") -> str:
    root = f"Root=1-{rng.getrandbits(32):08x}-{rng.getrandbits(96):024x}"
    parts = [root]
    if parent:
        parts.append(f"Parent={rng.getrandbits(64) or 1:016x}")
    if sampled is not None:
        parts.append(f"Sampled={sampled}")
    return ";".join(parts)


class AgreesWithTheSdk(unittest.TestCase):
    ENVS = [
        {},
        {"OTEL_TRACES_SAMPLER": "always_on"},
        {"OTEL_TRACES_SAMPLER": "always_off"},
        {"OTEL_TRACES_SAMPLER": "ALWAYS_OFF"},  # the SDK lowercases
        {"OTEL_TRACES_SAMPLER": "parentbased_always_off"},
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"},
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"},
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1e-9"},
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "bogus"},  # -> 1.0
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},  # -> 1.0
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.3"},
        {"OTEL_TRACES_SAMPLER": "no_such_sampler"},  # -> parentbased_always_on
    ]

    def test_every_sampler_on_many_headers(self):
        rng = random.Random(1234)
        shapes = [dict(parent=True, sampled="1"), dict(parent=True, sampled="0"), dict(parent=True, sampled=None),
                  dict(parent=True, sampled="?"), dict(parent=False, sampled="1"), dict(parent=False, sampled=None)]
        with self.assertLogs("opentelemetry", "WARNING"):
            for env in self.ENVS:
                decisions = set()
                for i in range(300):
                    h = header(rng, **shapes[i % len(shapes)])
                    with self.subTest(env=env, header=h):
                        ours = our_decision(env, h)
                        self.assertEqual(ours, sdk_decision(env, h))
                        decisions.add(ours)
                if env.get("OTEL_TRACES_SAMPLER_ARG") in ("0.25", "0.5", "0.3"):
                    self.assertEqual(decisions, {True, False}, env)  # the ratio really splits

    def test_ratio_bound_at_the_edges(self):
        """The decision flips exactly where the SDK's does: low 64 bits vs round(rate * 2**64)."""
        sampler = TraceSampler("traceidratio", 0.5)
        sdk = sdk_sampling.TraceIdRatioBased(0.5)
        for low in (sdk.bound - 1, sdk.bound, sdk.bound + 1, 0, (1 << 64) - 1):
            trace_id = (0xABCDEF << 64) | low
            self.assertEqual(sampler.should_sample(trace_id.to_bytes(16, "big"), None),
                             sdk.should_sample(None, trace_id, "x").decision.is_sampled(), low)


class NeverFatal(unittest.TestCase):
    def test_unknown_values_warn_and_fall_back(self):
        config = load_config({"OTEL_TRACES_SAMPLER": "jaeger_remote"})
        self.assertEqual(sampler_from_config(config), TraceSampler())
        self.assertEqual(len(config.warnings), 1)
        self.assertIn("OTEL_TRACES_SAMPLER", config.warnings[0])
        config = load_config({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "nan"})
        self.assertEqual(sampler_from_config(config), TraceSampler("traceidratio", 1.0))
        self.assertIn("OTEL_TRACES_SAMPLER_ARG", config.warnings[0])

    def test_default_and_arg_ignored_for_other_samplers(self):
        self.assertEqual(sampler_from_env({}), TraceSampler("parentbased_always_on"))
        self.assertEqual(sampler_from_env({"OTEL_TRACES_SAMPLER": "always_on", "OTEL_TRACES_SAMPLER_ARG": "0.2"}),
                         TraceSampler("always_on"))
        self.assertEqual(sampler_from_env({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                                           "OTEL_TRACES_SAMPLER_ARG": "0.1"}),
                         TraceSampler("parentbased_traceidratio", 0.1))


if __name__ == "__main__":
    unittest.main()
