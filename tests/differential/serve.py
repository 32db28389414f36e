"""Runs frappe_dispatch.py under gunicorn the way bench and frappe_docker run Frappe: sync
workers (4 by default), timeout 120 s.

Binds 127.0.0.1:0 itself, prints the port on stdout (one line, flushed), then hands the socket
to gunicorn as `fd://N`. Exits when its stdin reaches EOF (the test process that started it is
gone), so a crashed test run leaves no server behind.

    python3 serve.py [--workers N]     # env DIFF_LOG=/path/to/log.jsonl
"""

import argparse
import os
import signal
import socket
import sys
import threading

try:
    from gunicorn.app.base import BaseApplication
    import werkzeug  # noqa: F401
except ImportError as e:
    sys.stderr.write(f"missing python dependency ({e}); run: pip install -r tests/differential/requirements.txt\n")
    sys.exit(3)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from frappe_dispatch import application  # noqa: E402


class Server(BaseApplication):
    def __init__(self, app, options):
        self.application = app
        self.options = options
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        return self.application


def watch_stdin(master_pid):
    """Stop the whole server when the parent closes our stdin (or dies)."""
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except Exception:
        pass
    os.kill(master_pid, signal.SIGTERM)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    sock.set_inheritable(True)
    print(sock.getsockname()[1], flush=True)

    threading.Thread(target=watch_stdin, args=(os.getpid(),), daemon=True).start()
    Server(
        application,
        {
            "bind": [f"fd://{sock.fileno()}"],
            "workers": args.workers,
            "worker_class": "sync",
            "timeout": 120,
            "graceful_timeout": 1,
            "loglevel": "warning",
            "accesslog": None,
        },
    ).run()


if __name__ == "__main__":
    main()
