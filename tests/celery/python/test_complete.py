"""complete_deferred_message against a real `metro run --emulator` (METRO_BIN): sync and async,
twice, the errors metro answers with, and an unreachable metro."""

import asyncio
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "python"))

import metro  # noqa: E402
from metro import complete as complete_module  # noqa: E402
from metro.complete import complete_deferred_message  # noqa: E402

ADMIN = "admin-token"
VIEWER = "viewer-token"


def wait_until(predicate, timeout=30.0, what="a condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Metro:
    """`metro run --emulator` with an exec handler that completes explicitly, on free ports."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="metro-python-")
        config = os.path.join(self.dir, "metro.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(f"""
[metro]
workers = 2
ledger = "sqlite://{self.dir}/ledger.db"

[[subscriptions]]
topic_name = "orders"
subscription_name = "billing"
connection_string = "Endpoint=sb://localhost;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true"

  [[subscriptions.handlers]]
  subject = "Orders/Created"
  exec = ["true"]
  completion = "explicit"

[admin]
listen = "127.0.0.1:0"
tokens = [{{ token = "{ADMIN}", role = "admin", name = "ops" }},
          {{ token = "{VIEWER}", role = "viewer", name = "watcher" }}]
""")
        self.output = []
        self.process = subprocess.Popen(
            [os.environ["METRO_BIN"], "run", "--config", config, "--emulator", "--emulator-port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        match = wait_until(lambda: self._find(r"metro admin listening: (http://[^/\s]+)/"), 60,
                           "metro's admin API")
        self.url = match.group(1)
        wait_until(lambda: self._find(r"metro running"), 60, "metro to run")

    def _read(self):
        for line in self.process.stdout:
            self.output.append(line)

    def _find(self, pattern):
        return re.search(pattern, "".join(self.output))

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        self.process.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def api(self, method, path, body=None, token=ADMIN):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def publish(self, n):
        self.api("POST", "/api/v1/publish",
                 {"topic": "orders", "body": {"subject": "Orders/Created", "n": n}})

    def message(self, sequence_number):
        return self.api("GET", f"/api/v1/deferred/orders/billing/{sequence_number}")

    def deferred_one(self, n):
        """Publishes a message and returns its sequence number once its handler ran."""
        self.publish(n)

        def ready():
            items = self.api("GET", "/api/v1/deferred?topic=orders&state=deferred&limit=1000")["items"]
            known = {i["sequence_number"] for i in items}
            fresh = sorted(known - self.taken)
            for seq in fresh:
                runs = self.message(seq)["runs"]
                if runs and runs[-1]["outcome"] == "succeeded":
                    return seq
            return None

        seq = wait_until(ready, 60, f"message {n} to be deferred and handled")
        self.taken.add(seq)
        return seq

    taken = set()


class CompleteDeferredMessageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.metro = Metro()

    @classmethod
    def tearDownClass(cls):
        cls.metro.stop()

    def setUp(self):
        self.saved = {k: os.environ.get(k) for k in ("METRO_URL", "METRO_TOKEN")}
        os.environ["METRO_URL"] = self.metro.url
        os.environ["METRO_TOKEN"] = ADMIN

    def tearDown(self):
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def completed(self, seq):
        wait_until(lambda: self.metro.message(seq)["state"] == "completed", 30,
                   f"message {seq} to be completed")

    def test_both_import_paths_are_the_same_function(self):
        self.assertIs(metro.complete_deferred_message, complete_deferred_message)
        self.assertIs(metro.complete_deferred_message_async,
                      complete_module.complete_deferred_message_async)

    def test_a_sync_call_blocks_until_metro_completed_the_message(self):
        seq = self.metro.deferred_one(1)
        result = complete_deferred_message(sequence_number=seq, topic_name="orders",
                                           subscription_name="billing")
        self.assertIsNone(result)
        self.assertEqual(self.metro.message(seq)["state"], "completed")

    def test_completing_twice_is_harmless(self):
        seq = self.metro.deferred_one(2)
        for _ in range(2):
            complete_deferred_message(sequence_number=seq, topic_name="orders",
                                      subscription_name="billing")
        self.completed(seq)

    def test_await_in_a_running_loop_works_as_the_original_wrote_it(self):
        seq = self.metro.deferred_one(3)

        async def handler():
            await complete_deferred_message(sequence_number=seq, topic_name="orders",
                                            subscription_name="billing")

        asyncio.run(handler())
        self.assertEqual(self.metro.message(seq)["state"], "completed")

    def test_the_explicit_coroutine(self):
        seq = self.metro.deferred_one(4)
        asyncio.run(metro.complete_deferred_message_async(
            sequence_number=seq, topic_name="orders", subscription_name="billing"))
        self.assertEqual(self.metro.message(seq)["state"], "completed")

    def test_a_call_nobody_awaits_in_a_running_loop_still_completes(self):
        # The original's sync_to_async advice created a coroutine nobody ran; this runs anyway.
        seq = self.metro.deferred_one(5)

        async def handler():
            complete_deferred_message(sequence_number=seq, topic_name="orders",
                                      subscription_name="billing")
            for _ in range(300):
                await asyncio.sleep(0.05)
                if self.metro.message(seq)["state"] == "completed":
                    return True
            return False

        self.assertTrue(asyncio.run(handler()))

    def test_an_unknown_message_is_not_found(self):
        with self.assertRaises(metro.MetroNotFoundError) as caught:
            complete_deferred_message(sequence_number=987654, topic_name="orders",
                                      subscription_name="billing")
        self.assertEqual(caught.exception.status, 404)
        self.assertIn("orders/billing#987654", str(caught.exception))

    def test_an_unknown_token_and_a_viewers_token_are_refused(self):
        seq = self.metro.deferred_one(6)
        os.environ["METRO_TOKEN"] = "not-a-token"
        with self.assertRaises(metro.MetroAuthError) as caught:
            complete_deferred_message(sequence_number=seq, topic_name="orders",
                                      subscription_name="billing")
        self.assertEqual(caught.exception.status, 401)
        self.assertNotIn("not-a-token", str(caught.exception))
        os.environ["METRO_TOKEN"] = VIEWER
        with self.assertRaises(metro.MetroForbiddenError) as caught:
            complete_deferred_message(sequence_number=seq, topic_name="orders",
                                      subscription_name="billing")
        self.assertIn("viewer", str(caught.exception))
        self.assertEqual(self.metro.message(seq)["state"], "deferred")

    def test_a_dead_lettered_message_is_a_conflict(self):
        seq = self.metro.deferred_one(7)
        self.metro.api("POST", f"/api/v1/deferred/orders/billing/{seq}/dead-letter",
                       {"reason": "Test"})
        with self.assertRaises(metro.MetroConflictError) as caught:
            complete_deferred_message(sequence_number=seq, topic_name="orders",
                                      subscription_name="billing")
        self.assertEqual(caught.exception.status, 409)
        self.assertIn("dead-lettered", str(caught.exception))

    def test_an_unreachable_metro_is_retried_until_the_deadline(self):
        os.environ["METRO_URL"] = f"http://127.0.0.1:{free_port()}"
        start = time.monotonic()
        with self.assertRaises(metro.MetroUnavailableError) as caught:
            complete_deferred_message(sequence_number=1, topic_name="orders",
                                      subscription_name="billing", timeout=1.5)
        self.assertLess(time.monotonic() - start, 10)
        self.assertIn("cannot reach metro", str(caught.exception))


class WithoutMetroTest(unittest.TestCase):
    def setUp(self):
        self.saved = {k: os.environ.pop(k, None) for k in ("METRO_URL", "METRO_TOKEN")}

    def tearDown(self):
        for key, value in self.saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value
        for name in ("django", "django.conf"):
            sys.modules.pop(name, None)

    def test_no_url_anywhere_is_a_configuration_error(self):
        with self.assertRaises(metro.MetroConfigError) as caught:
            complete_deferred_message(sequence_number=1, topic_name="t", subscription_name="s")
        self.assertIn("METRO_URL", str(caught.exception))

    def test_django_settings_are_used_when_the_environment_has_nothing(self):
        calls = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                calls.append((self.path, self.headers.get("Authorization")))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            django = types.ModuleType("django")
            conf = types.ModuleType("django.conf")
            conf.settings = types.SimpleNamespace(
                METRO_URL=f"http://127.0.0.1:{server.server_address[1]}/", METRO_TOKEN="from-django")
            django.conf = conf
            sys.modules["django"] = django
            sys.modules["django.conf"] = conf
            complete_deferred_message(sequence_number=5, topic_name="my topic",
                                      subscription_name="sub/1")
        finally:
            server.shutdown()
            server.server_close()
        self.assertEqual(calls, [("/api/v1/deferred/my%20topic/sub%2F1/5/complete",
                                  "Bearer from-django")])

    def test_passing_failures_are_retried_and_others_are_not(self):
        answers = [503, 502, 200]
        seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                status = answers.pop(0) if answers else 500
                seen.append(status)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps({"error": f"status {status}", "status": status}).encode())

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        os.environ["METRO_URL"] = f"http://127.0.0.1:{server.server_address[1]}"
        os.environ["METRO_TOKEN"] = "t"
        try:
            complete_deferred_message(sequence_number=1, topic_name="t", subscription_name="s",
                                      timeout=20)
            self.assertEqual(seen, [503, 502, 200])
            answers[:] = [400]
            with self.assertRaises(metro.MetroError) as caught:
                complete_deferred_message(sequence_number=1, topic_name="t", subscription_name="s")
            self.assertEqual(caught.exception.status, 400)
            # The error answer's connection is closed once read, not left to the garbage
            # collector (a ResourceWarning at some later point, or at exit).
            answer = caught.exception.__context__
            self.assertIsInstance(answer, urllib.error.HTTPError)
            self.assertTrue(answer.fp is None or answer.fp.closed)
        finally:
            server.shutdown()
            server.server_close()


if __name__ == "__main__":
    unittest.main()
