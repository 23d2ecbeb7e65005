#!/bin/sh
# An exec handler: metro writes the task as JSON on stdin. Exit 0 = done, 75 = retry later,
# anything else = failed (retried by the handler's policy). What it prints to stdout shows up in
# metro's output; the end of what it prints to stderr becomes the error of a failed run.
exec python3 -c '
import json, os, sys
task = json.load(sys.stdin)
message = task["message"]
joke = message.get("joke", message) if isinstance(message, dict) else message
line = "[%s #%d] %s: %s\n" % (task["subscription_name"], task["sequence_number"],
                               task["subject"], joke)
os.write(1, line.encode())  # one write: lines of handlers running at once do not interleave
'
