"""What a process said as it stopped: the last line of its log.

Every program of the platform ends its log with one "stopped" line
(rt_log_stopped() in runtime/rt.h) carrying the shutdown's leftovers:
pooled objects and messages still out when a drain was cut short. After a
clean drain there are none (a leak aborts the process instead), so a test
that stops a process fails when its last "stopped" line counts any.
"""
import json
import os


def log_size(path):
    """Where the next run's lines will start in the log at `path`."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def last_stopped(path, offset=0):
    """The last "stopped" record written to `path` after `offset`, or None
    (the process was killed, crashed, or logs nothing at its level)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    for line in reversed(text.splitlines()):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("msg") == "stopped":
            return rec
    return None


def leftovers(path, offset=0):
    """The leftovers the last "stopped" line after `offset` counts (0 when
    there is no such line), and a short description for a failed check."""
    rec = last_stopped(path, offset)
    if rec is None:
        return 0, "no stopped line"
    count = rec.get("leftovers", 0)
    return (count if isinstance(count, int) else 1), json.dumps(rec)
