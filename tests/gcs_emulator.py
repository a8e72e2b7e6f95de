"""A real object store for tests: gcp-storage-emulator on loopback, plus a token endpoint.

Beam asks google-auth for credentials and, finding none, retries for about 25 seconds in
every process before falling back to anonymous access. So the tests hand it an
``authorized_user`` credential whose token endpoint is a tiny server on loopback: Beam's
real authenticated client path runs, against the emulator, with no wait.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

AUDIENCE = "//iam.googleapis.com/locations/global/workforcePools/p/providers/p"


class _TokenHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.dumps(
            {"access_token": "emulator-token", "expires_in": 3600, "token_type": "Bearer"}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port: int, proc: subprocess.Popen, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gcp-storage-emulator exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError("gcp-storage-emulator did not start")


@contextlib.contextmanager
def running_emulator() -> Iterator[str]:
    """Starts the emulator and the token endpoint; yields the emulator's URL.

    Sets STORAGE_EMULATOR_HOST and GOOGLE_APPLICATION_CREDENTIALS for this process and
    its children (Beam's multi-processing workers), and restores them afterwards.
    """
    token_server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenHandler)
    threading.Thread(target=token_server.serve_forever, daemon=True).start()
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gcp_storage_emulator",
            "start",
            "--host=127.0.0.1",
            f"--port={port}",
            "--in-memory",
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    saved = {
        k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")
    }
    with tempfile.TemporaryDirectory() as tmp:
        credentials = os.path.join(tmp, "credentials.json")
        with open(credentials, "w") as fh:
            json.dump(
                {
                    # The one credential type whose token endpoint google-auth does not
                    # pin to Google's: it refreshes against our loopback server.
                    "type": "external_account_authorized_user",
                    "audience": AUDIENCE,
                    "client_id": "emulator",
                    "client_secret": "emulator",
                    "refresh_token": "emulator",
                    "token_url": f"http://127.0.0.1:{token_server.server_port}/token",
                },
                fh,
            )
        try:
            _wait_for(port, proc)
            url = f"http://127.0.0.1:{port}"
            os.environ["STORAGE_EMULATOR_HOST"] = url
            os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = credentials
            yield url
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            proc.terminate()
            proc.wait(timeout=10)
            token_server.shutdown()
