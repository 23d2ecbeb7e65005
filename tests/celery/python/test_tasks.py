"""metro.run_handler without a worker: resolving dotted paths and calling the function with the
original's four keyword arguments (the worker round trips are in celery_test.cpp)."""

import os
import sys
import tempfile
import textwrap
import unittest

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "python"))

from metro.tasks import RUN_HANDLER, resolve, run_handler  # noqa: E402


class RunHandlerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="metro-tasks-")
        package = os.path.join(cls.dir, "demoproj", "demoapp")
        os.makedirs(package)
        for d in (os.path.join(cls.dir, "demoproj"), package):
            open(os.path.join(d, "__init__.py"), "w").close()
        with open(os.path.join(package, "services.py"), "w") as f:
            f.write(textwrap.dedent("""
                calls = []

                def my_func(*, message, topic_name, subscription_name, sequence_number):
                    calls.append((message, topic_name, subscription_name, sequence_number))

                class Handlers:
                    @staticmethod
                    def nested(*, message, topic_name, subscription_name, sequence_number):
                        calls.append(("nested", sequence_number))
            """))
        with open(os.path.join(package, "broken.py"), "w") as f:
            f.write("import a_dependency_that_is_missing\n")
        sys.path.insert(0, cls.dir)

    def test_the_task_has_a_stable_name(self):
        self.assertEqual(RUN_HANDLER, "metro.run_handler")
        self.assertEqual(run_handler.name, "metro.run_handler")

    def test_a_function_is_called_with_the_four_keyword_arguments(self):
        from demoproj.demoapp import services
        run_handler.run("demoproj.demoapp.services.my_func", message={"a": 1}, topic_name="t",
                        subscription_name="s", sequence_number=42)
        self.assertEqual(services.calls[-1], ({"a": 1}, "t", "s", 42))
        run_handler.run("demoproj.demoapp.services.Handlers.nested", message=None,
                        topic_name="t", subscription_name="s", sequence_number=43)
        self.assertEqual(services.calls[-1], ("nested", 43))

    def test_paths_that_do_not_import_name_the_path(self):
        for path, reason in (("nope.module.f", "no module named 'nope'"),
                             ("demoproj.demoapp.services.missing", "has no attribute 'missing'"),
                             ("my_func", "not a dotted path")):
            with self.assertRaises(ImportError) as caught:
                run_handler.run(path, message={}, topic_name="t", subscription_name="s",
                                sequence_number=1)
            self.assertIn(repr(path), str(caught.exception))
            self.assertIn(reason, str(caught.exception))

    def test_a_handler_module_that_fails_to_import_its_own_dependency_says_so(self):
        with self.assertRaises(ModuleNotFoundError) as caught:
            resolve("demoproj.demoapp.broken.f")
        self.assertIn("a_dependency_that_is_missing", str(caught.exception))


if __name__ == "__main__":
    unittest.main()
