import time
import unittest

from lambda_otel.xray import MAX_HEADER_LENGTH, XRayContext, parse_span_id, parse_xray_header

ROOT = "1-6352a70e-1e2c502e358361800241fd45"
TRACE = bytes.fromhex("6352a70e1e2c502e358361800241fd45")
PARENT = bytes.fromhex("35465b3a9e2f7c6a")


class ValidHeaders(unittest.TestCase):
    def test_full_header_from_platform_start(self):
        ctx = parse_xray_header(f"Root={ROOT};Parent=35465b3a9e2f7c6a;Sampled=1")
        self.assertEqual(ctx, XRayContext(TRACE, PARENT, True, remote_parent=True))
        self.assertEqual(len(ctx.trace_id), 16)
        self.assertEqual(len(ctx.parent_id), 8)

    def test_any_order_whitespace_and_unknown_keys(self):
        ctx = parse_xray_header(
            f" Sampled = 0 ; Lineage=a87bd80c:1|68fd508a:5 ;Parent= 35465b3a9e2f7c6a;  Root={ROOT} ;Self=1-x"
        )
        self.assertEqual(ctx, XRayContext(TRACE, PARENT, False, remote_parent=False))

    def test_upper_case_hex_accepted(self):
        ctx = parse_xray_header(f"Root={ROOT.upper()};Parent=35465B3A9E2F7C6A")
        self.assertEqual(ctx.trace_id, TRACE)
        self.assertEqual(ctx.parent_id, PARENT)

    def test_root_only_is_valid(self):
        self.assertEqual(parse_xray_header(f"Root={ROOT}"), XRayContext(TRACE, None, None))

    def test_sampled_question_mark_is_no_decision(self):
        self.assertIsNone(parse_xray_header(f"Root={ROOT};Sampled=?").sampled)
        self.assertIsNone(parse_xray_header(f"Root={ROOT};Sampled=yes").sampled)

    def test_trailing_semicolon(self):
        self.assertEqual(parse_xray_header(f"Root={ROOT};").trace_id, TRACE)


class MalformedHeaders(unittest.TestCase):
    def test_malformed_root_gives_none(self):
        for root in (
            "",
            "2-6352a70e-1e2c502e358361800241fd45",  # unknown version
            "1-6352a70e-1e2c502e358361800241fd4",  # 23 hex
            "1-6352a70e-1e2c502e358361800241fd456",  # 25 hex
            "1-6352a70g-1e2c502e358361800241fd45",  # not hex
            "1-6352a70e1e2c502e358361800241fd45",  # missing dash
            "1-00000000-000000000000000000000000",  # all zero
            "1-６352a70e-1e2c502e358361800241fd45",  # full-width digit (unicode)
            "1-6352a70e-1e2c502e3583618002 1fd45",  # embedded space (bytes.fromhex would accept)
        ):
            with self.subTest(root=root):
                self.assertIsNone(parse_xray_header(f"Root={root};Parent=35465b3a9e2f7c6a;Sampled=1"))

    def test_no_root(self):
        self.assertIsNone(parse_xray_header("Parent=35465b3a9e2f7c6a;Sampled=1"))
        self.assertIsNone(parse_xray_header("root=" + ROOT))  # keys are case-sensitive

    def test_malformed_parent_keeps_root(self):
        for parent in ("", "xyz", "35465b3a9e2f7c6", "35465b3a9e2f7c6a0", "0000000000000000", "３5465b3a9e2f7c6a"):
            with self.subTest(parent=parent):
                ctx = parse_xray_header(f"Root={ROOT};Parent={parent};Sampled=1")
                self.assertEqual(ctx, XRayContext(TRACE, None, True))

    def test_missing_equals_is_ignored(self):
        self.assertEqual(parse_xray_header(f"Root={ROOT};Parent;Sampled").trace_id, TRACE)
        self.assertIsNone(parse_xray_header("Root"))

    def test_duplicate_keys_first_wins(self):
        other = "1-6352a70e-ffffffffffffffffffffffff"
        ctx = parse_xray_header(f"Root={ROOT};Root={other};Parent=35465b3a9e2f7c6a;Parent=1111111111111111")
        self.assertEqual(ctx.trace_id, TRACE)
        self.assertEqual(ctx.parent_id, PARENT)

    def test_non_strings(self):
        for value in (None, 12, b"Root=" + ROOT.encode(), ["Root=" + ROOT], {"Root": ROOT}):
            with self.subTest(value=value):
                self.assertIsNone(parse_xray_header(value))

    def test_unicode_and_control_characters(self):
        self.assertIsNone(parse_xray_header("Root=1-ééééééé-" + "é" * 24))
        self.assertIsNone(parse_xray_header("\x00\ud800;Root=\ud800"))
        ctx = parse_xray_header(f"Root={ROOT};Lineage=\ud800\x00")
        self.assertEqual(ctx.trace_id, TRACE)

    def test_huge_input_is_rejected_cheaply(self):
        huge = f"Root={ROOT};" + "A=B;" * 2_000_000  # 8 MB
        start = time.perf_counter()
        for _ in range(1000):
            self.assertIsNone(parse_xray_header(huge))
        # O(1) per call: 1000 calls on an 8 MB string must not scan it (generous bound).
        self.assertLess(time.perf_counter() - start, 1.0)
        self.assertIsNone(parse_xray_header("x" * (MAX_HEADER_LENGTH + 1)))

    def test_many_parts_only_first_are_read(self):
        # Root hidden after the part cap is not found; costs bounded work.
        header = ";".join(["A=1"] * 40) + f";Root={ROOT}"
        self.assertLessEqual(len(header), MAX_HEADER_LENGTH)
        self.assertIsNone(parse_xray_header(header))

    def test_parse_span_id(self):
        self.assertEqual(parse_span_id("24cd7d670fa455f0"), bytes.fromhex("24cd7d670fa455f0"))
        for bad in (None, 5, "", "0000000000000000", "24cd7d670fa455f", "x" * 100, "24cd 7d670fa455f"):
            with self.subTest(bad=bad):
                self.assertIsNone(parse_span_id(bad))


if __name__ == "__main__":
    unittest.main()


class RemoteParentAsTheSdkSeesIt(unittest.TestCase):
    """``remote_parent`` must equal what the function SDK's X-Ray propagator extracts."""

    def test_against_the_real_propagator(self):
        from opentelemetry import trace
        from opentelemetry.propagators.aws import AwsXRayPropagator

        p = "Parent=35465b3a9e2f7c6a"
        headers = [
            f"Root={ROOT};{p};Sampled=1", f"Root={ROOT};{p};Sampled=0", f"Root={ROOT};{p}",
            f"Root={ROOT};{p};Sampled=?", f"Root={ROOT};{p};Sampled=1;", f"Root={ROOT};{p};Sampled=1;junk",
            f"Root={ROOT};{p};Sampled=1;Lineage=a87bd80c:1|68fd508a:5", f"Root={ROOT};Parent=zz;Sampled=1",
            f"Root={ROOT};Parent=0000000000000000;Sampled=1", f"Root={ROOT};Sampled=1", f" Root = {ROOT} ; {p} ; Sampled=1",
            f"Root={ROOT};{p};Sampled=1;Self=a=b",
        ]
        for header in headers:
            with self.subTest(header=header):
                span = trace.get_current_span(AwsXRayPropagator().extract({"X-Amzn-Trace-Id": header}))
                sc = span.get_span_context()
                expected = (sc.trace_flags.sampled if sc.is_valid else None)
                self.assertEqual(parse_xray_header(header).remote_parent, expected)
