"""Shutdown (its deadline, SIGKILL), timeouts, errors and crashes, and the environment of each process."""

import json
import sys
import unittest

from lambda_otel.local.simulator import SimulatorError
from tests.fixtures.sim.support import FIXTURES, SimTestCase, proc_state

STUBBORN_RUNTIME = [sys.executable, str(FIXTURES / "runtimes" / "stubborn_runtime.py")]


class Shutdown(SimTestCase):
    def test_shutdown_sequence_deadline_and_sigkill(self):
        """Check 11: SIGTERM runtime first; SHUTDOWN only to subscribers; exit 0 in time; SIGKILL at deadline."""
        sim = self.make_sim([("ext-good", ["--on-shutdown", "sleep:0.2"]),
                             ("ext-invoke-only", ["--events", "INVOKE"]),
                             ("ext-stubborn", ["--on-shutdown", "ignore"])], shutdown_budget_ms=1000)
        sim.start(timeout=20)
        sim.invoke({})
        pids = [sim.runtime_pid, *sim.extension_pids.values()]
        down = sim.shutdown("spindown")
        self.assertEqual(down.reason, "spindown")
        self.assertLessEqual(down.runtime_sigterm_at.mono, down.shutdown_events_sent_at.mono)
        self.assertEqual(down.runtime.exit_code, -15)  # awslambdaric dies of SIGTERM
        self.assertLessEqual(down.runtime.exited_at.mono, down.shutdown_events_sent_at.mono)
        self.assertEqual(down.deadline_ms, int(down.started_at.wall * 1000 + 1000))

        good = down.extensions["ext-good"]
        self.assertEqual((good.exit_code, good.exited_in_time, good.killed, good.received_shutdown), (0, True, False, True))
        event = self.records("ext-good", "shutdown")[0]
        self.assertEqual((event["reason"], event["deadline_ms"]), ("spindown", down.deadline_ms))
        self.assertLessEqual(event["deadline_ms"] - event["wall"] * 1000, 1000)

        quiet = down.extensions["ext-invoke-only"]
        self.assertFalse(quiet.received_shutdown)
        self.assertTrue(quiet.killed)
        self.assertLess(quiet.exited_at.mono, good.exited_at.mono)  # killed at once, not at the deadline
        self.assertEqual(self.records("ext-invoke-only", "shutdown"), [])

        stubborn = down.extensions["ext-stubborn"]
        self.assertEqual((stubborn.exit_code, stubborn.exited_in_time, stubborn.killed), (-9, False, True))
        self.assertGreaterEqual(stubborn.exited_at.wall * 1000, down.deadline_ms - 5)  # not before the deadline
        self.assertTrue(self.records("ext-stubborn", "ignoring"))
        self.assertEqual(self.records("ext-stubborn", "next_after_shutdown_returned"), [])  # /next blocked
        self.assertEqual([proc_state(p) for p in pids], [None] * len(pids))  # every process is gone
        self.assertIsNone(sim.shutdown())  # nothing left to shut down

    def test_runtime_ignoring_sigterm_is_killed_after_its_share(self):
        """A custom runtime command; SIGTERM ignored -> SIGKILL after the runtime's share (<= 300 ms)."""
        sim = self.make_sim([], handler="any.handler", runtime_cmd=STUBBORN_RUNTIME)
        sim.start(timeout=20)
        res = sim.invoke({})
        self.assertEqual(json.loads(res.response), {"custom": True})
        down = sim.shutdown()
        self.assertTrue(down.runtime.killed)
        self.assertEqual(down.runtime.exit_code, -9)
        waited = down.runtime.exited_at.mono - down.runtime_sigterm_at.mono
        self.assertGreaterEqual(waited, 0.3)
        self.assertIn("custom runtime for handler any.handler",
                      [e["record"] for e in sim.telemetry_events("function")])


class Timeouts(SimTestCase):
    def test_invoke_timeout_resets_and_next_invoke_reinits(self):
        """Check 12: status timeout, SHUTDOWN timeout, processes end, the next invoke runs a fresh init."""
        sim = self.make_sim([("ext-a", ["--on-shutdown", "sleep:0.1"])], handler="sim_handlers.slow",
                            timeout_s=0.5, shutdown_budget_ms=1000)
        first_init = sim.start(timeout=20)
        old_pids = [sim.runtime_pid, *sim.extension_pids.values()]
        res = sim.invoke({"sleep": 5})
        self.assertEqual((res.status, res.error_type), ("timeout", "Sandbox.Timedout"))
        self.assertEqual((res.runtime_done["status"], res.runtime_done["errorType"]), ("timeout", "Sandbox.Timedout"))
        self.assertEqual((res.report["status"], res.report["errorType"]), ("timeout", "Sandbox.Timedout"))
        self.assertGreaterEqual(res.ended_at.wall * 1000, res.deadline_ms - 5)  # not before the deadline
        self.assertEqual(res.reset.reason, "timeout")
        self.assertEqual(self.records("ext-a", "shutdown")[0]["reason"], "timeout")
        self.assertEqual([proc_state(p) for p in old_pids], [None] * len(old_pids))

        res2 = sim.invoke({"sleep": 0})
        self.assertEqual(res2.status, "success")
        self.assertIsNotNone(res2.init)
        self.assertTrue(res2.init.ok)
        self.assertEqual(len(sim.telemetry_events("platform.initStart")), 2)
        self.assertNotEqual(sim.runtime_pid, old_pids[0])
        self.assertGreater(res2.init.started_at.mono, first_init.ended_at.mono)
        self.assertIn("initDurationMs", res2.report["metrics"])
        # the fresh extension process registered again and got the new INVOKE
        self.assertEqual(len(self.records("ext-a", "register")), 2)
        # a new execution environment: its own instance id (and log stream), as backends tell sandboxes apart
        ids = [e["record"]["instanceId"] for e in sim.telemetry_events("platform.initStart")]
        self.assertNotEqual(ids[0], ids[1])

    def test_extension_never_ready_burns_the_function_timeout(self):
        sim = self.make_sim([("ext-a", ["--never-next-after-invoke"])], timeout_s=0.5, shutdown_budget_ms=300)
        sim.start(timeout=20)
        res = sim.invoke({})
        self.assertEqual(res.wait_response(1), res.response)
        self.assertEqual(json.loads(res.response)["ok"], True)  # the caller got its response ...
        self.assertEqual(res.runtime_done["status"], "success")
        self.assertEqual((res.status, res.report["status"]), ("timeout", "timeout"))  # ... the invoke timed out
        self.assertNotIn("ext-a", res.extension_next_at)
        self.assertEqual(res.reset.reason, "timeout")
        self.assertTrue(res.reset.extensions["ext-a"].killed)


class Errors(SimTestCase):
    def test_function_error_via_awslambdaric(self):
        """Check 13: /error -> status error with the runtime's errorType, no reset, same processes."""
        sim = self.make_sim([("ext-a", [])], handler="sim_handlers.fail")
        sim.start(timeout=20)
        pid = sim.runtime_pid
        res = sim.invoke({})
        self.assertEqual(res.status, "error")
        self.assertRegex(res.error_type, r"^(Runtime|Function)\.[A-Z][a-zA-Z]+$")
        self.assertEqual(res.runtime_done["errorType"], res.error_type)
        self.assertEqual(res.report["status"], "error")
        self.assertIn("handler failed on purpose", json.loads(res.error_body)["errorMessage"])
        self.assertIsNone(res.reset)
        self.assertEqual(sim.invoke({}).status, "error")
        self.assertEqual(sim.runtime_pid, pid)

    def test_runtime_crash_during_invoke(self):
        sim = self.make_sim([("ext-a", [])], handler="sim_handlers.crash", shutdown_budget_ms=500)
        sim.start(timeout=20)
        res = sim.invoke({})
        self.assertEqual((res.status, res.error_type), ("error", "Runtime.ExitError"))
        self.assertEqual(res.runtime_done["errorType"], "Runtime.ExitError")
        self.assertEqual(res.reset.reason, "failure")
        self.assertEqual(self.records("ext-a", "shutdown")[0]["reason"], "failure")
        self.assertEqual(res.reset.runtime.exit_code, 3)

    def test_extension_crash_and_exit_error_during_invoke(self):
        for flag, error_type in (("--crash-on-invoke", "Extension.Crash"),
                                 ("--exit-error-on-invoke", "Extension.ExitError")):
            with self.subTest(flag=flag):
                sim = self.make_sim([("ext-bad", [flag, "1"]), ("ext-a", [])], shutdown_budget_ms=500)
                sim.start(timeout=20)
                res = sim.invoke({})
                self.assertEqual((res.status, res.error_type), ("error", error_type))
                self.assertEqual(res.report["errorType"], error_type)
                self.assertEqual(res.reset.reason, "failure")
                self.assertEqual(self.records("ext-a", "shutdown")[0]["reason"], "failure")
                self.assertEqual(sim.invoke({}).init.status, "success")  # fresh environment afterwards
                sim.stop()

    def test_runtime_init_error_then_suppressed_init(self):
        sim = self.make_sim([("ext-a", [])], handler="sim_init_error.handler", shutdown_budget_ms=500)
        init = sim.start(timeout=20, check=False)
        self.assertEqual(init.status, "error")
        self.assertRegex(init.error_type, r"^Runtime\.[A-Z][a-zA-Z]+$")
        report = sim.telemetry_events("platform.initReport")[-1]["record"]
        self.assertEqual((report["status"], report["errorType"]), ("error", init.error_type))
        res = sim.invoke({})  # init is retried within the invoke ("suppressed init", phase invoke)
        self.assertEqual((res.status, res.error_type), ("error", init.error_type))
        self.assertEqual(res.init.phase, "invoke")
        self.assertEqual(sim.telemetry_events("platform.initStart")[-1]["record"]["phase"], "invoke")

    def test_extension_init_error(self):
        sim = self.make_sim([("ext-bad", ["--init-error", "Extension.ConfigInvalid"])], shutdown_budget_ms=500)
        init = sim.start(timeout=20, check=False)
        self.assertEqual((init.status, init.error_type), ("error", "Extension.InitError"))
        self.assertEqual(self.records("ext-bad", "init_error")[0]["status"], 202)
        self.assertIn("bad config", init.message)  # the extension's own errorMessage is the cause
        self.assertEqual(init.extensions[0].error_message, "bad config")
        ext = sim.telemetry_events("platform.extension")[-1]["record"]
        self.assertEqual((ext["name"], ext["state"], ext["errorType"]), ("ext-bad", "InitError", "Extension.ConfigInvalid"))
        self.assertEqual([proc_state(p) for p in init.extension_pids.values()], [None])  # torn down
        self.assertIn(init.runtime_pid and proc_state(init.runtime_pid), (None, False))
        again = self.make_sim([("ext-bad", ["--init-error", "Extension.ConfigInvalid"])], shutdown_budget_ms=300)
        with self.assertRaisesRegex(SimulatorError, "Extension.InitError"):
            again.start(timeout=20)  # check=True turns a failed init into a clear error


class Environment(SimTestCase):
    def test_runtime_and_extension_environments(self):
        """Shared variables in both, runtime-only ones hidden from extensions, extra env in both."""
        sim = self.make_sim([("ext-a", [])], handler="sim_handlers.env", env={"CUSTOM_VAR": "x"},
                            function_name="fn-env", memory_mb=256)
        sim.start(timeout=20)
        runtime_env = sim.invoke({}).json()
        ext_env = self.records("ext-a", "register")[0]["env"]
        for key in ("AWS_LAMBDA_RUNTIME_API", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_LAMBDA_FUNCTION_NAME",
                    "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE"):
            self.assertIn(key, runtime_env)
            self.assertEqual(runtime_env[key], ext_env[key])
        self.assertEqual(ext_env["AWS_LAMBDA_RUNTIME_API"], sim.runtime_api)
        self.assertEqual(ext_env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "256")
        self.assertEqual(ext_env["CUSTOM_VAR"], "x")
        for key in ("_HANDLER", "LAMBDA_TASK_ROOT", "AWS_EXECUTION_ENV", "AWS_LAMBDA_LOG_GROUP_NAME",
                    "AWS_LAMBDA_LOG_STREAM_NAME"):
            self.assertIn(key, runtime_env)
            self.assertNotIn(key, ext_env)
        self.assertFalse([k for k in ext_env if k.startswith("_")])
        self.assertEqual(runtime_env["_HANDLER"], "sim_handlers.env")
        self.assertEqual(runtime_env["AWS_LAMBDA_LOG_GROUP_NAME"], "/aws/lambda/fn-env")
        register_body = self.records("ext-a", "register")[0]["body"]
        self.assertEqual(register_body, {"functionName": "fn-env", "functionVersion": "$LATEST",
                                         "handler": "sim_handlers.env", "accountId": "123456789012"})


if __name__ == "__main__":
    unittest.main()
