"""`metro import-django` (METRO_BIN): the example project's settings, dumped by
metro.django_settings, become examples/celery/metro.toml, which `metro check` accepts; and the
settings shapes and mistakes the command meets."""

import json
import os
import subprocess
import sys
import tempfile
import types
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
EXAMPLE = os.path.join(SOURCE, "examples", "celery")
sys.path.insert(0, os.path.join(SOURCE, "python"))

from metro.django_settings import settings_json  # noqa: E402

CONNECTION = ("Endpoint=sb://localhost;SharedAccessKeyName=RootManageSharedAccessKey;"
              "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true")
ENV = {"CONNECTION_STRING_METRO_DEMO": CONNECTION, "CELERY_BROKER_URL": "redis://localhost:6379/0"}


def metro(*args, env=None):
    return subprocess.run([os.environ["METRO_BIN"], *args], capture_output=True, text=True,
                          env={"PATH": os.environ.get("PATH", ""), **(env or {})}, timeout=60)


class ImportDjangoTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="metro-import-")

    def write(self, settings):
        path = os.path.join(self.dir, "settings.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(settings, f)
        return path

    def test_the_example_projects_settings_become_its_metro_toml(self):
        # Dump the way the README's one-liner does, in the project's environment.
        dumped = subprocess.run(
            [sys.executable, "-c",
             "import demoproj.settings as s; from metro.django_settings import dump; dump(s)"],
            cwd=EXAMPLE, capture_output=True, text=True, timeout=60,
            env={**os.environ, **ENV, "PYTHONPATH": os.path.join(SOURCE, "python") + ":" + EXAMPLE})
        self.assertEqual(dumped.returncode, 0, dumped.stderr)
        settings = json.loads(dumped.stdout)
        self.assertEqual(settings["METRO"]["subscriptions"][0]["connection_string"],
                         {"env": "CONNECTION_STRING_METRO_DEMO"})
        self.assertEqual(settings["METRO"]["subscriptions"][1]["handlers"][0]["handler_function"],
                         {"path": "demoproj.demoapp.tasks.log_joke",
                          "celery_task": "demoproj.demoapp.tasks.log_joke"})
        result = metro("import-django", self.write(settings), env=ENV)
        self.assertEqual(result.returncode, 0, result.stderr)
        with open(os.path.join(EXAMPLE, "metro.toml"), encoding="utf-8") as f:
            self.assertEqual(result.stdout, f.read())
        config = os.path.join(self.dir, "metro.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(result.stdout)
        check = metro("check", "--config", config, env={**ENV, "METRO_ADMIN_TOKEN": "t"})
        self.assertEqual(check.returncode, 0, check.stderr)
        self.assertIn("OK, 2 subscriptions, 3 handlers", check.stdout)
        self.assertIn("subject ^MetroDemo/Type/.*$ (regex) -> celery demoproj.demoapp.tasks.log_joke",
                      check.stdout)

    def test_values_not_from_the_environment_are_written_with_a_note_and_no_secret_shown(self):
        settings = {
            "METROID": {
                "subscriptions": [{
                    "topic_name": "orders", "subscription_name": "billing",
                    "connection_string": CONNECTION,
                    "handlers": [
                        {"subject": "Orders/${literal}", "handler_function": "app.handlers.literal"},
                        {"subject": "Orders/", "regex": True, "handler_function": "app.handlers.prefix"},
                        {"subject": "Orders/A|Orders/B", "regex": True,
                         "handler_function": {"path": "app.handlers.either"}},
                        {"subject": r"Orders/\d+\Z", "regex": True,
                         "handler_function": "app.handlers.end"},
                    ],
                }],
                "worker_type": "celery",
            },
            "CELERY_BROKER_URL": "redis://:hunter2@redis.internal:6379/0",
            "CELERY_RESULT_BACKEND": "django-db",
            "CELERY_TASK_DEFAULT_QUEUE": "metro",
        }
        result = metro("import-django", self.write(settings))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("hunter2", result.stderr)
        self.assertIn("not Redis", result.stderr)
        self.assertIn("it is a secret", result.stderr)
        out = result.stdout
        self.assertIn('broker = "redis://:hunter2@redis.internal:6379/0"', out)
        self.assertIn('queue = "metro"', out)
        self.assertIn('subject = "Orders/$${literal}"', out)
        self.assertIn('subject = "Orders/.*"', out)
        self.assertIn('subject = "(?:Orders/A|Orders/B).*"', out)
        self.assertIn(r"subject = 'Orders/\d+\z'", out)
        self.assertIn('python = "app.handlers.either"', out)

    def test_a_bare_metro_dict_with_no_celery_settings_reads_them_from_the_environment(self):
        settings = {"subscriptions": [{
            "topic_name": "orders", "subscription_name": "billing", "connection_string": None,
            "handlers": [{"subject": "Orders/Created", "handler_function": "app.handlers.f"}]}]}
        result = metro("import-django", self.write(settings))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn('broker = "${CELERY_BROKER_URL}"', result.stdout)
        self.assertIn('connection_string = "${CONNECTION_STRING_ORDERS}"', result.stdout)

    def test_settings_it_cannot_convert_are_refused_naming_where(self):
        cases = [
            ({"METRO": {"subscriptions": [], "worker_type": "rq"}}, "worker_type"),
            ({"METRO": {"subscriptions": []}}, "METRO.subscriptions: expected a list"),
            ({"METRO": {"subscriptions": [{"topic_name": "t", "subscription_name": "s",
                                           "handlers": [{"subject": "x"}]}]}},
             "METRO.subscriptions[0].handlers[0].handler_function: missing"),
            ({"METRO": {"subscriptions": [{"topic_name": "t", "subscription_name": "s",
                                           "handlers": [{"subject": "x", "handler_function": 3}]}]}},
             "handler_function: expected a dotted path"),
        ]
        for settings, expected in cases:
            result = metro("import-django", self.write(settings))
            self.assertEqual(result.returncode, 2, result.stdout)
            self.assertIn(expected, result.stderr)
        with open(os.path.join(self.dir, "bad.json"), "w") as f:
            f.write("{not json")
        result = metro("import-django", os.path.join(self.dir, "bad.json"))
        self.assertEqual(result.returncode, 2)
        self.assertIn("is not JSON", result.stderr)
        result = metro("import-django", os.path.join(self.dir, "missing.json"))
        self.assertEqual(result.returncode, 2)
        self.assertIn("cannot read", result.stderr)


class SettingsJsonTest(unittest.TestCase):
    def test_functions_become_dotted_paths_and_environment_values_references(self):
        def handler(*, message, topic_name, subscription_name, sequence_number):
            pass

        os.environ["METRO_TEST_CONNECTION"] = CONNECTION
        try:
            settings = types.SimpleNamespace(METRO={"subscriptions": [{
                "topic_name": "t", "subscription_name": "s", "connection_string": CONNECTION,
                "handlers": [{"subject": CONNECTION, "handler_function": handler}]}]})
            out = settings_json(settings)
        finally:
            del os.environ["METRO_TEST_CONNECTION"]
        subscription = out["METRO"]["subscriptions"][0]
        self.assertEqual(subscription["connection_string"], {"env": "METRO_TEST_CONNECTION"})
        # Only connection strings and Celery URLs are looked up, never subjects.
        self.assertEqual(subscription["handlers"][0]["subject"], CONNECTION)
        self.assertEqual(subscription["handlers"][0]["handler_function"],
                         f"{__name__}.SettingsJsonTest.test_functions_become_dotted_paths_and_"
                         "environment_values_references.<locals>.handler")

    def test_settings_without_metro_are_refused(self):
        with self.assertRaises(RuntimeError):
            settings_json(types.SimpleNamespace())


if __name__ == "__main__":
    unittest.main()
