#!/bin/sh
# An exec handler: metro writes the task as JSON on stdin. Exit 0 = done, 75 = retry later,
# anything else = failed (retried by the handler's policy).
task=$(cat)
echo "metro-demo handler got: $task" >&2
exit 0
