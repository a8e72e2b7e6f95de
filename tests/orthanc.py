"""A real PACS for tests: Orthanc with its DICOMweb plugin on loopback, and a faulty proxy.

Orthanc runs from the Debian packages ``orthanc`` and ``orthanc-dicomweb`` (``.ci/run``
installs them) with its own temporary storage, index and configuration, HTTP on a free
loopback port, DICOM networking off. ``FaultyProxy`` sits in front of it and answers some
requests with 503/429 or drops the connection, to test retries and dead letters.
"""

import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGIN_GLOBS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
    "/usr/lib/*/orthanc/libOrthancDicomWeb.so*",
)


def plugin_path() -> str | None:
    """Where the Debian package put the DICOMweb plugin (the path moves between releases)."""
    for pattern in PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def available() -> bool:
    return os.path.exists(ORTHANC) and plugin_path() is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Orthanc:
    """One running server: ``url`` is its DICOMweb root (``http://127.0.0.1:P/dicom-web``)."""

    port: int
    proc: subprocess.Popen
    workdir: str
    users: dict[str, str] = field(default_factory=dict)
    dicom_port: int | None = None  # its DICOM (DIMSE) port, when started with dicom=True

    @property
    def dimse(self) -> str:
        """Its DIMSE address as an input URL: ``dimse://ORTHANC@127.0.0.1:P``."""
        return f"dimse://{DICOM_AET}@127.0.0.1:{self.dicom_port}"

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.rest}/dicom-web"

    @property
    def auth(self) -> tuple[str, str] | None:
        return next(iter(self.users.items()), None)

    def upload(self, data: bytes) -> bool:
        """Stores one Part 10 object through Orthanc's REST API; False when it refuses it
        or holds an instance with that SOP Instance UID already (it keeps the first)."""
        response = requests.post(f"{self.rest}/instances", data=data, auth=self.auth, timeout=30)
        return response.status_code == 200 and response.json().get("Status") != "AlreadyStored"

    def sop_instance_uids(self) -> list[str]:
        """Every stored instance's SOP Instance UID (Orthanc's own REST API, not DICOMweb)."""
        ids = requests.get(f"{self.rest}/instances", auth=self.auth, timeout=30).json()
        uids = []
        for orthanc_id in ids:
            tags = requests.get(
                f"{self.rest}/instances/{orthanc_id}/simplified-tags", auth=self.auth, timeout=30
            ).json()
            uids.append(tags["SOPInstanceUID"])
        return sorted(uids)

    def instance_file(self, sop_instance_uid: str) -> bytes:
        found = requests.post(
            f"{self.rest}/tools/lookup", data=sop_instance_uid, auth=self.auth, timeout=30
        ).json()
        orthanc_id = next(f["ID"] for f in found if f["Type"] == "Instance")
        return requests.get(
            f"{self.rest}/instances/{orthanc_id}/file", auth=self.auth, timeout=30
        ).content

    def clear(self) -> None:
        for orthanc_id in requests.get(f"{self.rest}/patients", auth=self.auth, timeout=30).json():
            requests.delete(f"{self.rest}/patients/{orthanc_id}", auth=self.auth, timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


DICOM_AET = "ORTHANC"
CALLING_AET = "DICOMFLOW"  # dicomflow's default calling AE title
_ALLOW = {f"Allow{what}": True for what in ("Echo", "Find", "Get", "Move", "Store")}


@contextlib.contextmanager
def running_orthanc(
    users: dict[str, str] | None = None,
    dicom: bool = False,
    modalities: dict[str, tuple[str, int]] | None = None,
) -> Iterator[Orthanc]:
    """Starts Orthanc on a free loopback port with temporary storage; stops and removes it.

    Args:
        users: HTTP basic-auth users (name → password); none means no authentication.
        dicom: also listen for DIMSE on a free port (AE title ``ORTHANC``), answering
            C-ECHO, C-FIND, C-GET, C-MOVE and C-STORE from ``DICOMFLOW`` on loopback.
        modalities: more AE titles → (host, port): the nodes C-MOVE may send to.
    """
    if not available():
        raise RuntimeError(
            "Orthanc and its DICOMweb plugin are not installed: "
            "apt-get install orthanc orthanc-dicomweb (as .ci/run does)"
        )
    workdir = tempfile.mkdtemp(prefix="orthanc-")
    port = free_port()
    dicom_port = free_port() if dicom else None
    config = {
        "Name": "dicomflow-test",
        "StorageDirectory": os.path.join(workdir, "storage"),
        "IndexDirectory": os.path.join(workdir, "index"),
        "HttpPort": port,
        "HttpBindAddresses": ["127.0.0.1"],
        "RemoteAccessAllowed": False,
        "DicomServerEnabled": dicom,
        "DicomAet": DICOM_AET,
        "DicomPort": dicom_port or 4242,
        # Orthanc 1.10 has no DICOM bind address: it answers only the AE titles below,
        # and only from loopback.
        "DicomCheckCalledAet": True,
        "DicomCheckModalityHost": True,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "UnknownSopClassAccepted": True,
        "DicomModalities": {
            aet.lower(): {"AET": aet, "Host": host, "Port": mport, **_ALLOW}
            for aet, (host, mport) in {
                CALLING_AET: ("127.0.0.1", 104),
                **(modalities or {}),
            }.items()
        },
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": users or {},
        "HttpsVerifyPeers": False,
        "ConcurrentJobs": 1,
        "HttpThreadsCount": 16,
        "Plugins": [plugin_path()],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
    }
    config_path = os.path.join(workdir, "orthanc.json")
    with open(config_path, "w") as fh:
        json.dump(config, fh)
    log = open(os.path.join(workdir, "orthanc.log"), "wb")  # noqa: SIM115 (Orthanc's lifetime)
    proc = subprocess.Popen([ORTHANC, config_path], stdout=log, stderr=subprocess.STDOUT)
    server = Orthanc(port, proc, workdir, dict(users or {}), dicom_port)
    try:
        _wait_ready(server)
        yield server
    finally:
        server.stop()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_ready(server: Orthanc, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            with open(os.path.join(server.workdir, "orthanc.log"), "rb") as fh:
                tail = fh.read()[-2000:].decode(errors="replace")
            raise RuntimeError(f"Orthanc exited with {server.proc.returncode}: {tail}")
        with contextlib.suppress(requests.RequestException):
            response = requests.get(f"{server.url}/studies", auth=server.auth, timeout=1)
            if response.status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError("Orthanc did not start")


class FaultyProxy:
    """An HTTP proxy on loopback in front of Orthanc (``target``: its REST root, no path)
    that fails chosen requests.

    ``fault(method, path, count)`` returns None to forward the request, an HTTP status to
    answer with instead (with ``Retry-After: 0``), or ``"drop"`` to close the connection
    unanswered. ``count`` is how many times this method and path were seen before.
    Every request is recorded in ``seen`` as ``(method, path, outcome)``.
    """

    def __init__(self, target: str, fault: Callable[[str, str, int], object], delay: float = 0.0):
        self.target = target.rstrip("/")
        self.fault = fault
        self.delay = delay  # seconds each forwarded request is held (to make them overlap)
        self.seen: list[tuple[str, str, object]] = []
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests forwarded at the same time
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy._lock:
                    count = sum(1 for m, p, _ in proxy.seen if (m, p) == (self.command, self.path))
                    outcome = proxy.fault(self.command, self.path, count)
                    proxy.seen.append((self.command, self.path, outcome))
                if outcome == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if outcome is not None:
                    self.send_response(int(outcome))
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length", "connection")
                }
                with proxy._lock:
                    proxy.in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                try:
                    time.sleep(proxy.delay)
                    upstream = requests.request(
                        self.command, proxy.target + self.path, data=body, headers=headers,
                        timeout=60,
                    )  # fmt: skip
                finally:
                    with proxy._lock:
                        proxy.in_flight -= 1
                self.send_response(upstream.status_code)
                for k, v in upstream.headers.items():
                    if k.lower() not in (
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "content-encoding",
                    ):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

            do_GET = do_POST = _handle

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        """The proxy's DICOMweb root."""
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
