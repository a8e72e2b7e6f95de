"""DICOMweb input URLs: ``dicomweb+https://host/path/dicom-web[/studies/S[/series/R[/instances/I]]]``."""

import re
from dataclasses import dataclass
from typing import TypeGuard
from urllib.parse import urlsplit

from models.uids import is_valid_uid

SCHEMES = ("dicomweb+http://", "dicomweb+https://")
GOOGLE_HOST = "healthcare.googleapis.com"
_LEVELS = ("studies", "series", "instances")


def is_dicomweb(uri: str) -> bool:
    """True for an input that names a DICOMweb store (or a study, series or instance in it)."""
    return uri.startswith(SCHEMES)


# What a store may be asked for by its own string: a UID, or a non-conformant one that
# some anonymizers write (64 hex digits, letters, dashes). Nothing that a URL path would
# read differently (slashes, spaces, percent signs, query or fragment marks, "..").
_REFERENCE = re.compile(r"(?=.*[0-9A-Za-z])[0-9A-Za-z._-]{1,64}")


def is_uid(value: str | None) -> TypeGuard[str]:
    """A well-formed DICOM UID: digits and dots, at most 64 characters."""
    return value is not None and value != "" and is_valid_uid(value)


def is_reference(value: str | None) -> TypeGuard[str]:
    """A UID string the store can be asked for in a URL path: a well-formed UID, or a
    malformed one that is still plain letters, digits, dots, dashes and underscores (the
    store holds the instance under it, so it is read like any other)."""
    return value is not None and bool(_REFERENCE.fullmatch(value))


@dataclass(frozen=True)
class StoreUrl:
    """A DICOMweb store's root (``base``, plain http/https) and an optional resource in it."""

    base: str
    study: str | None = None
    series: str | None = None
    instance: str | None = None

    @classmethod
    def parse(cls, uri: str) -> "StoreUrl":
        """Parses a ``dicomweb+http(s)://`` input URL.

        Raises:
            ValueError: naming what is wrong. Credentials in the URL and query strings are
                refused: secrets come from --dicomweb-credentials-*, filters from
                --dicomweb-query.
        """
        if not is_dicomweb(uri):
            raise ValueError("a DICOMweb input starts with dicomweb+http:// or dicomweb+https://")
        parts = urlsplit(uri[len("dicomweb+") :])
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "credentials do not belong in a DICOMweb URL; use --dicomweb-credentials-env "
                "or --dicomweb-credentials-file"
            )
        if parts.query or parts.fragment:
            raise ValueError("a DICOMweb URL takes no query; put filters in --dicomweb-query")
        if not parts.hostname:
            raise ValueError("a DICOMweb URL needs a host")
        segments = [s for s in parts.path.split("/") if s]
        uids: list[str] = []
        if "studies" in segments:
            at = segments.index("studies")
            tail, segments = segments[at:], segments[:at]
            for i in range(0, len(tail), 2):
                level = tail[i]
                value = tail[i + 1] if i + 1 < len(tail) else None
                if i // 2 >= len(_LEVELS) or level != _LEVELS[i // 2]:
                    raise ValueError("a DICOMweb URL ends in /studies/S[/series/R[/instances/I]]")
                if not is_reference(value):
                    raise ValueError(f"the {level} part of a DICOMweb URL needs a UID")
                uids.append(value)
        base = f"{parts.scheme}://{parts.netloc}" + "".join(f"/{s}" for s in segments)
        return cls(base, *uids)

    @property
    def level(self) -> str:
        """``store``, ``study``, ``series`` or ``instance``."""
        if self.instance:
            return "instance"
        if self.series:
            return "series"
        return "study" if self.study else "store"

    @property
    def google(self) -> bool:
        """The Cloud Healthcare API (Google credentials apply)."""
        return (urlsplit(self.base).hostname or "").endswith(GOOGLE_HOST)

    @property
    def http(self) -> str:
        """The resource's plain http(s) URL."""
        url = self.base
        for level, uid in zip(_LEVELS, (self.study, self.series, self.instance), strict=True):
            if uid is None:
                break
            url += f"/{level}/{uid}"
        return url

    @property
    def uri(self) -> str:
        """The resource as an input URL again (what ``source`` holds for an instance)."""
        return "dicomweb+" + self.http

    def child(self, **uids: str) -> "StoreUrl":
        """The same store with the given study/series/instance UIDs."""
        return StoreUrl(self.base, **{"study": self.study, "series": self.series, **uids})


def describe_inputs(inputs: list[str]) -> list[str]:
    """Inputs as a manifest records them: a DICOMweb URL by its store's root only, since the
    study, series and instance UIDs in it are the originals (identifiers)."""
    described: dict[str, int] = {}
    for uri in inputs:
        if is_dicomweb(uri):
            store = StoreUrl.parse(uri)
            root = "dicomweb+" + store.base
            if store.level == "store":
                described.setdefault(root, 0)
            else:
                described[root] = described.get(root, 0) + 1
        else:
            described.setdefault(uri, 0)
    return [
        f"{uri} ({n} studies, series or instances in it)" if n else uri
        for uri, n in described.items()
    ]
