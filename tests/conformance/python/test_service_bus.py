"""The official Python SDK (Debian python3-azure: azure-servicebus on uamqp) against the metro
emulator over TLS, trusting the emulator's generated certificate.

That SDK always connects to port 5671 (a port in the endpoint is ignored), so the emulator's TLS
listener binds 5671 here.
"""

import datetime
import os
import re
import signal
import subprocess
import sys
import time
import unittest

from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusSubQueue

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
METRO = os.environ.get("METRO_BIN", os.path.join(ROOT, "build", "dev", "bin", "metro"))
CONNECTION_STRING = ("Endpoint=sb://localhost/;SharedAccessKeyName=RootManageSharedAccessKey;"
                     "SharedAccessKey=SAS_KEY_VALUE")
QUEUE = "python"


class ServiceBusConformance(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.emulator = subprocess.Popen(
            [METRO, "emulator", "--config", os.path.join(ROOT, "tests", "conformance", "bus.toml"),
             "--port", "0", "--tls-port", "5671"],
            stdout=subprocess.PIPE, text=True)
        line = cls.emulator.stdout.readline()
        match = re.search(r"amqps=(\d+) cert=(\S+)", line)
        if not match:
            cls.emulator.kill()
            raise RuntimeError("the emulator did not start (is port 5671 free?): " + line)
        cls.certificate = match.group(2)
        cls.client = ServiceBusClient.from_connection_string(
            CONNECTION_STRING, connection_verify=cls.certificate)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.emulator.send_signal(signal.SIGTERM)
        cls.emulator.wait(timeout=10)

    def receive(self, receiver, count, timeout=5.0):
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            got.extend(receiver.receive_messages(max_message_count=count - len(got),
                                                 max_wait_time=1))
        return got

    def test_1_send_receive_complete(self):
        with self.client.get_queue_sender(QUEUE) as sender:
            sender.send_messages(ServiceBusMessage(
                '{"subject":"MetroDemo/Type/GeekJokes"}', subject="MetroDemo/Type/GeekJokes",
                message_id="py-1", correlation_id="corr-py", application_properties={"n": 7}))
        with self.client.get_queue_receiver(QUEUE) as receiver:
            [message] = self.receive(receiver, 1)
            self.assertEqual(str(message), '{"subject":"MetroDemo/Type/GeekJokes"}')
            self.assertEqual(message.subject, "MetroDemo/Type/GeekJokes")
            self.assertEqual(message.message_id, "py-1")
            self.assertEqual(message.correlation_id, "corr-py")
            self.assertEqual(message.application_properties[b"n"], 7)
            self.assertEqual(message.delivery_count, 0)
            self.assertGreaterEqual(message.sequence_number, 1)
            self.assertIsNotNone(message.lock_token)
            receiver.complete_message(message)
            self.assertEqual(receiver.peek_messages(max_message_count=10), [])

    def test_2_defer_receive_deferred_complete(self):
        with self.client.get_queue_sender(QUEUE) as sender:
            sender.send_messages([ServiceBusMessage("later-1"), ServiceBusMessage("later-2")])
        with self.client.get_queue_receiver(QUEUE) as receiver:
            messages = self.receive(receiver, 2)
            numbers = [m.sequence_number for m in messages]
            for m in messages:
                receiver.defer_message(m)
            self.assertEqual(receiver.receive_messages(max_wait_time=1), [])
            deferred = receiver.receive_deferred_messages(sequence_numbers=numbers)
            self.assertEqual(sorted(str(m) for m in deferred), ["later-1", "later-2"])
            for m in deferred:
                receiver.complete_message(m)
            self.assertEqual(receiver.peek_messages(max_message_count=10,
                                                    sequence_number=min(numbers)), [])

    def test_3_dead_letter(self):
        with self.client.get_queue_sender(QUEUE) as sender:
            sender.send_messages(ServiceBusMessage("poison"))
        with self.client.get_queue_receiver(QUEUE) as receiver:
            [message] = self.receive(receiver, 1)
            receiver.dead_letter_message(message, reason="MalformedBody",
                                         error_description="not JSON")
        with self.client.get_queue_receiver(
                QUEUE, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
            [dead] = self.receive(dlq, 1)
            self.assertEqual(str(dead), "poison")
            self.assertEqual(dead.dead_letter_reason, "MalformedBody")
            self.assertEqual(dead.dead_letter_error_description, "not JSON")
            dlq.complete_message(dead)

    def test_4_peek_shows_deferred_state(self):
        with self.client.get_queue_sender(QUEUE) as sender:
            sender.send_messages(ServiceBusMessage("peek-me"))
        with self.client.get_queue_receiver(QUEUE) as receiver:
            [message] = self.receive(receiver, 1)
            receiver.defer_message(message)
            peeked = receiver.peek_messages(max_message_count=10,
                                            sequence_number=message.sequence_number)
            self.assertEqual([str(m) for m in peeked], ["peek-me"])
            self.assertEqual(peeked[0].sequence_number, message.sequence_number)
            self.assertEqual(str(peeked[0].state), "ServiceBusMessageState.DEFERRED")
            [deferred] = receiver.receive_deferred_messages([message.sequence_number])
            receiver.complete_message(deferred)

    def test_5_renew_lock(self):
        with self.client.get_queue_sender(QUEUE) as sender:
            sender.send_messages(ServiceBusMessage("hold"))
        with self.client.get_queue_receiver(QUEUE) as receiver:
            [message] = self.receive(receiver, 1)
            before = message.locked_until_utc
            time.sleep(1.1)
            after = receiver.renew_message_lock(message)
            self.assertGreaterEqual(after - before, datetime.timedelta(seconds=1))
            receiver.complete_message(message)


if __name__ == "__main__":
    unittest.main(verbosity=2)
