"""The original's pipeline, in Python with the official SDK (Debian python3-azure), against the
same emulator: receive → route by subject → defer → (the task) receive the deferred message by
sequence number → complete. One shared receiver and no Celery hop, so this is the fastest form of
the original; the real one also paid a broker round trip per task.

usage: /usr/bin/python3 bench/python-pipeline.py <emulator certificate> [N]
The SDK always connects to port 5671, so the emulator's TLS port must be 5671.
"""

import json
import resource
import sys
import time

from azure.servicebus import ServiceBusClient, ServiceBusMessage

CONNECTION_STRING = ("Endpoint=sb://localhost/;SharedAccessKeyName=RootManageSharedAccessKey;"
                     "SharedAccessKey=SAS_KEY_VALUE")
TOPIC, SUBSCRIPTION = "bench-py", "metro"


def handler(task):
    pass


ROUTES = {"Bench/Type/Noop": handler}


def main():
    certificate = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    client = ServiceBusClient.from_connection_string(CONNECTION_STRING,
                                                     connection_verify=certificate)
    with client.get_topic_sender(TOPIC) as sender:
        body = json.dumps({"subject": "Bench/Type/Noop"})
        for start in range(0, n, 200):
            batch = sender.create_message_batch()
            for _ in range(min(200, n - start)):
                batch.add_message(ServiceBusMessage(body))
            sender.send_messages(batch)

    done = 0
    began = time.monotonic()
    with client.get_subscription_receiver(TOPIC, SUBSCRIPTION, prefetch_count=100) as receiver:
        while done < n:
            deferred = []
            for message in receiver.receive_messages(max_message_count=100, max_wait_time=1):
                body = json.loads(str(message))
                route = ROUTES.get(body.get("subject"))
                receiver.defer_message(message)
                deferred.append((message.sequence_number, route, body))
            for sequence_number, route, body in deferred:
                # The task: run the handler, then complete_deferred_message(sequence_number, …).
                route(body)
                [message] = receiver.receive_deferred_messages([sequence_number])
                receiver.complete_message(message)
                done += 1
    seconds = time.monotonic() - began
    client.close()
    print(json.dumps({"messages": n, "python_pipeline_per_s": int(n / seconds),
                      "python_peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


if __name__ == "__main__":
    main()
