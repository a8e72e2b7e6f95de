"""Quiet output: a command prints dicomflow's own lines, not its libraries' chatter.

TensorFlow, absl, gRPC and Beam print start-up banners, hints and internal warnings
(``E0000 ... failed call to cuInit``, ``oneDNN custom operations are on``) that read as
failures to a newcomer and bury the lines a user can act on. By default the command line
turns them off before the libraries are imported; ``--verbose`` or ``DICOMFLOW_LOG=debug``
(or ``info``) shows everything, with Python's log records at that level.

Some of TensorFlow's lines come from native code before any setting is read (absl's
"before InitializeLog" lines), so the console script also filters its standard error at the
file-descriptor level: lines in the native log format are dropped, everything else passes
unchanged. Child processes (Beam workers, the local trainer) inherit both.
"""

import atexit
import contextlib
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Mapping

LOG_ENV = "DICOMFLOW_LOG"
VERBOSE_FLAG = "--verbose"
# Our own packages: their warnings are for the user.
OWN_LOGGERS = ("pipelines", "transforms", "models")
# Libraries whose warnings are about themselves, not about the user's data or flags.
LIBRARY_LOGGERS = (
    "apache_beam",
    "absl",
    "tensorflow",
    "tensorflow_transform",
    "keras",
    "h5py",
    "matplotlib",
    "google",
    "urllib3",
    "pydicom",
    "rapidocr_onnxruntime",
    "RapidOCR",
)
# What TensorFlow and gRPC read at import: errors and worse only, no oneDNN or CPU hints.
QUIET_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "GRPC_VERBOSITY": "ERROR",
}
# A line of absl/glog-style native logging ("I0000 00:00:1796.5  8414 port.cc:153] ..."),
# absl's notice about it, and the continuation line of TensorFlow's CPU-feature hint.
NATIVE_LINE = re.compile(
    rb"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\s:\]]+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: .* rebuild TensorFlow)"
)


def verbosity(
    argv: list[str], environ: Mapping[str, str] | None = None
) -> tuple[int | None, list[str]]:
    """The log level asked for (None: quiet) and ``argv`` without ``--verbose``.

    Raises:
        ValueError: ``DICOMFLOW_LOG`` names no level.
    """
    environ = os.environ if environ is None else environ
    rest = [a for a in argv if a != VERBOSE_FLAG]
    wanted = environ.get(LOG_ENV, "").strip().lower()
    if wanted:
        level = logging.getLevelNamesMapping().get(wanted.upper())
        if level is None:
            raise ValueError(f"{LOG_ENV}={wanted!r} is not a log level (debug, info, warning)")
        return level, rest
    return (logging.INFO if len(rest) < len(argv) else None), rest


def configure(level: int | None) -> None:
    """Set up logging for a command: ``level`` None is quiet, else everything from that
    level on. Call before TensorFlow or Beam is imported."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [handler]
    if level is not None:
        root.setLevel(level)
        return
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    root.setLevel(logging.ERROR)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Python warnings from libraries (deprecations, Keras hints) are for their developers;
    # ours stay.
    warnings.filterwarnings("ignore")
    for name in OWN_LOGGERS:
        warnings.filterwarnings("default", module=rf"{name}(\.|$)")


class NativeLogFilter:
    """Standard error through a pipe; a thread copies every line but native log lines.

    Installed only by the console script (not when ``main`` is called in-process), and
    undone at exit after the last line is copied.
    """

    def __init__(self, fd: int = 2):
        self._fd = fd
        self._saved = os.dup(fd)
        read_end, write_end = os.pipe()
        sys.stderr.flush()
        os.dup2(write_end, fd)
        os.close(write_end)
        self._reader = os.fdopen(read_end, "rb", buffering=0)
        self._thread: threading.Thread | None = threading.Thread(
            target=self._copy, name="native-log-filter", daemon=True
        )
        self._thread.start()
        atexit.register(self.close)

    def _copy(self) -> None:
        pending = b""
        while chunk := self._reader.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not NATIVE_LINE.match(line))
            if kept:
                os.write(self._saved, kept)
        if pending and not NATIVE_LINE.match(pending):
            os.write(self._saved, pending)

    def close(self) -> None:
        """Restore the original standard error and wait for the copier to drain."""
        if self._thread is None:
            return
        with contextlib.suppress(ValueError):  # a closed sys.stderr: nothing to flush
            sys.stderr.flush()
        os.dup2(self._saved, self._fd)  # closes our pipe's write end at this fd
        # Children still holding the write end keep it open; do not wait for them forever.
        self._thread.join(timeout=2.0)
        self._thread = None
