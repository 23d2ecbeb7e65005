"""Sends a task with Celery's own apply_async and compares its envelope in Redis with the one
metro pushed for the same call: the same args, kwargs, embed, headers and properties, task ids,
delivery tags and the origin aside. Usage:
    compare_envelopes.py celery|python CELERY_QUEUE METRO_QUEUE BODY_JSON
Exit 0 when they agree; otherwise prints every difference and exits 1."""

import base64
import json
import sys

import redis

from metro_test_app import app, handle

METRO_ONLY_HEADERS = {"metro_correlation_id", "metro_attempt", "metro_handler"}
IGNORED_HEADERS = {"id", "root_id", "origin"}
IGNORED_PROPERTIES = {"correlation_id", "reply_to", "delivery_tag"}


def main():
    kind, celery_queue, metro_queue, body = sys.argv[1:5]
    kwargs = {"message": json.loads(body), "topic_name": "orders", "subscription_name": "billing",
              "sequence_number": 42}
    if kind == "celery":
        handle.apply_async(kwargs=kwargs, queue=celery_queue)
    else:
        from metro.tasks import run_handler
        run_handler.apply_async(args=("celery_handlers.my_func",), kwargs=kwargs,
                                queue=celery_queue)
    client = redis.Redis.from_url(app.conf.broker_url)
    theirs = json.loads(client.lindex(celery_queue, 0))
    ours = json.loads(client.lindex(metro_queue, 0))
    problems = []

    def expect(what, a, b):
        if a != b:
            problems.append(f"{what}: Celery {a!r} != metro {b!r}")

    expect("top-level keys", sorted(theirs), sorted(ours))
    for key in ("content-type", "content-encoding"):
        expect(key, theirs.get(key), ours.get(key))
    expect("body [args, kwargs, embed]", json.loads(base64.b64decode(theirs["body"])),
           json.loads(base64.b64decode(ours["body"])))
    th, oh = theirs["headers"], ours["headers"]
    for key in sorted(set(th) | set(oh)):
        if key in IGNORED_HEADERS:
            continue
        if key in METRO_ONLY_HEADERS:
            if key not in oh:
                problems.append(f"metro's header {key} is missing")
            continue
        expect(f"headers.{key}", th.get(key), oh.get(key))
    expect("metro's root_id", oh.get("id"), oh.get("root_id"))
    tp, op = theirs["properties"], ours["properties"]
    for key in sorted(set(tp) | set(op)):
        if key not in IGNORED_PROPERTIES | {"delivery_info"}:
            expect(f"properties.{key}", tp.get(key), op.get(key))
    # Each went to its own queue: the routing key names it.
    expect("properties.delivery_info", tp.get("delivery_info"),
           dict(op.get("delivery_info", {}), routing_key=celery_queue)
           if op.get("delivery_info", {}).get("routing_key") == metro_queue else op.get("delivery_info"))
    expect("metro's correlation_id", oh.get("id"), op.get("correlation_id"))
    for name, envelope in (("Celery", theirs), ("metro", ours)):
        print(f"{name}: {json.dumps(envelope, sort_keys=True)}")
    for problem in problems:
        print("DIFFERENT", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
