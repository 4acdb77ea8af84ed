"""A local HTTP server on 127.0.0.1 that behaves like TCIA's NBIA API, Zenodo's REST API and a weights host.

NBIA (under /nbia-api/services/v4, the paths of NBIA's v4 OpenAPI file and of params.yaml's base_url),
as its server code does: `getSeries?Collection=&Modality=&PatientID=` -> JSON list of series (an empty
list for no match); `getImage?SeriesInstanceUID=&NewFileNames=` -> the series as a zip whose first entry
is `LICENSE` (TCIA's data usage terms); `getImageWithMD5Hash?SeriesInstanceUID=` -> the images plus
`md5hashes.csv` (`Filename,MD5Hash`), or an empty zip when an image of the series has no MD5 in NBIA's
database (`no_md5` set on the series). A parameter the endpoint does not know, a missing
SeriesInstanceUID or a series it does not serve is answered 400 with a one-line reason. The zips are
built per request and Range is ignored (200, the whole body).

Zenodo (under /api): `records/<id>` -> JSON with `files[]` (key, size, checksum "md5:…", links.self);
`records/<id>/files` -> `{"entries": [...]}`; `records/<id>/files/<key>/content` -> bytes, Range
ignored unless `zenodo_ranges` is set. With `restricted` set the record lists no files and both file
endpoints answer 403 unless the request carries `Authorization: Bearer <personal_token>` or
`?token=<share_token>`.

Client filter (`blocked_agents`): a request whose User-Agent contains one of them is answered 403 with
an HTML block page before any route or token is looked at, as Zenodo's filter answers python-requests'
default User-Agent since December 2025 (the page's wording is a stand-in).

Weights host: `/files/<name>` -> bytes, honouring `Range: bytes=N-` (as the Hugging Face hub does).

Faults are queued per series UID, file key or name and consumed one per byte request: "drop"
(connection closed mid-body), "429" (with Retry-After), "500", "503", "truncate" (a complete response
whose body is cut short), "bad-md5" (md5hashes.csv publishes a wrong MD5 for the first image).
Every request is recorded in `server.log` (path, query, Range, Authorization and User-Agent headers,
status, bytes sent).
"""

from __future__ import annotations

import hashlib
import io
import json
import stat
import threading
import time
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

NBIA = "/nbia-api/services/v4"
LICENSE_TEXT = b"Data usage policies of The Cancer Imaging Archive apply to these images.\n"
ZENODO = "/api"
WEIGHTS = "/files"
NBIA_PARAMS = {  # what each NBIA endpoint accepts (anything else: 400)
    "getSeries": {
        "Collection",
        "PatientID",
        "StudyInstanceUID",
        "Modality",
        "BodyPartExamined",
        "ManufacturerModelName",
        "Manufacturer",
        "format",
    },
    "getImage": {"SeriesInstanceUID", "NewFileNames"},
    "getImageWithMD5Hash": {"SeriesInstanceUID"},
}


@dataclass
class Request:
    path: str
    query: dict[str, str]
    range: str | None
    auth: str | None = None
    agent: str | None = None
    status: int = 0
    sent: int = 0
    t: float = field(default_factory=time.monotonic)


def zip_bytes(entries: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """A zip with the given entry names kept verbatim (even '../x' or '/x'); `links` adds symlink entries."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def ct_series_files(
    tmp: Path, patient: str, study: str, series: str, n_slices: int = 20, size: int = 32, seed: int = 0
) -> dict[str, bytes]:
    """Real CT DICOM slices (through the phantom's writer) as {file name: bytes}, NBIA-style names."""
    from prdit.data.phantom import SeriesHeader, write_ct_series

    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(np.arange(n_slices), np.arange(size), np.arange(size), indexing="ij")
    body = ((y - size / 2) ** 2 + (x - size / 2) ** 2) < (0.4 * size) ** 2
    hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 10, body.shape) + z
    ipp = np.stack([np.full(n_slices, -80.0), np.full(n_slices, -80.0), -np.arange(n_slices) * 2.5], 1)
    folder = tmp / f"dcm-{series}"
    names = [f"1-{k + 1:03d}.dcm" for k in range(n_slices)]
    paths = write_ct_series(
        folder,
        hu,
        ipp,
        (1, 0, 0, 0, 1, 0),
        (5.0, 5.0),
        SeriesHeader(slice_thickness=2.5, patient_id=patient, study_uid=study, series_uid=series),
        names=names,
    )
    return {p.name: p.read_bytes() for p in paths}


class FakeServer:
    """Start with `with FakeServer() as server:`; fill with add_series/add_file; queue faults with fault()."""

    def __init__(self, collection: str = "LIDC-IDRI", record: str = "4242") -> None:
        self.collection, self.record = collection, record
        self.series: dict[str, dict] = {}  # uid -> listing entry + "files" (+ "zip": served instead)
        self.files: dict[str, bytes] = {}  # Zenodo key -> bytes
        self.weights: dict[str, bytes] = {}  # weights host: name -> bytes
        self.zenodo_ranges = False  # Zenodo's content endpoint reportedly ignores Range
        self.restricted = False
        self.blocked_agents: tuple[str, ...] = ()  # User-Agent substrings the client filter refuses
        self.personal_token = "pat-secret"
        self.share_token = "share-secret"
        self.published_checksum: dict[str, str] = {}  # key -> checksum to publish instead of the true one
        self.faults: dict[str, list[str]] = defaultdict(list)
        self.retry_after = 1
        self.rate: float | None = None  # bytes/s for byte endpoints (None: as fast as possible)
        self.log: list[Request] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def tcia_url(self) -> str:
        return self.base + NBIA

    @property
    def zenodo_url(self) -> str:
        return self.base + ZENODO

    @property
    def weights_url(self) -> str:
        return self.base + WEIGHTS

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def add_series(
        self,
        patient: str,
        study: str,
        uid: str,
        files: dict[str, bytes],
        *,
        image_count: int | None = None,
        modality: str = "CT",
        zip_data: bytes | None = None,
        no_md5: bool = False,
    ) -> None:
        self.series[uid] = {
            "SeriesInstanceUID": uid,
            "StudyInstanceUID": study,
            "PatientID": patient,
            "Modality": modality,
            "Collection": self.collection,
            "ProtocolName": "CHEST",
            "BodyPartExamined": "CHEST",
            "SeriesNumber": 3000,
            "Manufacturer": "FAKE",
            "ImageCount": len(files) if image_count is None else image_count,
            "FileSize": sum(len(v) for v in files.values()),
            "files": dict(files),
            **({"no_md5": True} if no_md5 else {}),
            **({"zip": zip_data} if zip_data is not None else {}),
        }

    def add_file(self, key: str, data: bytes) -> None:
        self.files[key] = data

    def fault(self, target: str, *kinds: str) -> None:
        with self._lock:
            self.faults[target].extend(kinds)

    def series_zip(self, uid: str, md5: bool, fault: str | None = None) -> bytes:
        """The zip NBIA would build now for series `uid` (with md5hashes.csv for getImageWithMD5Hash)."""
        s = self.series[uid]
        if "zip" in s:
            return s["zip"]
        if md5 and s.get("no_md5"):
            return zip_bytes({})
        files = {} if md5 else {"LICENSE": LICENSE_TEXT}
        files.update(s["files"])
        if md5:
            sums = {name: hashlib.md5(data).hexdigest() for name, data in files.items()}
            if fault == "bad-md5" and sums:
                sums[min(sums)] = "0" * 32
            files["md5hashes.csv"] = (
                "Filename,MD5Hash\n" + "".join(f"{n},{h}\n" for n, h in sums.items())
            ).encode()
        return zip_bytes(files)

    def requests(self, path_part: str = "", target: str | None = None) -> list[Request]:
        def hit(r: Request) -> bool:
            return (
                r.query.get("SeriesInstanceUID") == target
                or r.path.endswith(f"/{target}/content")
                or r.path == f"{WEIGHTS}/{target}"
            )

        return [r for r in self.log if path_part in r.path and (target is None or hit(r))]

    def bytes_sent(self, target: str) -> int:
        return sum(r.sent for r in self.requests(target=target))

    def _next_fault(self, target: str) -> str | None:
        with self._lock:
            return self.faults[target].pop(0) if self.faults.get(target) else None

    def _authorised(self, req: Request) -> bool:
        return req.auth == f"Bearer {self.personal_token}" or req.query.get("token") == self.share_token

    def _file_entries(self) -> list[dict]:
        entries = []
        for key, data in sorted(self.files.items()):
            md5 = "md5:" + hashlib.md5(data).hexdigest()
            entries.append(
                {
                    "id": hashlib.sha1(key.encode()).hexdigest(),
                    "key": key,
                    "size": len(data),
                    "checksum": self.published_checksum.get(key, md5),
                    "links": {"self": f"{self.zenodo_url}/records/{self.record}/files/{key}/content"},
                }
            )
        return entries

    def _record_json(self) -> dict:
        access = "restricted" if self.restricted else "open"
        return {
            "id": int(self.record),
            "recid": self.record,
            "metadata": {"title": "Fake RAD-ChestCT", "access_right": access},
            **({} if self.restricted else {"files": self._file_entries()}),
            "links": {"self": f"{self.zenodo_url}/records/{self.record}"},
        }


def _handler(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            req = Request(
                url.path,
                query,
                self.headers.get("Range"),
                self.headers.get("Authorization"),
                self.headers.get("User-Agent"),
            )
            with server._lock:
                server.log.append(req)
            if any(a in (req.agent or "") for a in server.blocked_agents):
                page = "<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head><body>Blocked</body></html>"
                return self._send(req, page.encode(), "text/html; charset=utf-8", 403)
            path = unquote(url.path)
            if path.startswith(NBIA + "/"):
                return self._nbia(req, path[len(NBIA) + 1 :], query)
            prefix = f"{ZENODO}/records/{server.record}"
            if path == prefix:
                return self._json(req, server._record_json())
            if path.startswith(prefix + "/files") and server.restricted and not server._authorised(req):
                return self._json(req, {"status": 403, "message": "Permission denied."}, status=403)
            if path == prefix + "/files":
                return self._json(req, {"entries": server._file_entries()})
            if path.startswith(prefix + "/files/") and path.endswith("/content"):
                key = path[len(prefix + "/files/") : -len("/content")]
                if key not in server.files:
                    return self._json(req, {"status": 404, "message": "not found"}, status=404)
                data = server.files[key]
                return self._bytes(req, key, data, "application/octet-stream", ranges=server.zenodo_ranges)
            if path.startswith(WEIGHTS + "/") and path[len(WEIGHTS) + 1 :] in server.weights:
                name = path[len(WEIGHTS) + 1 :]
                return self._bytes(req, name, server.weights[name], "application/octet-stream", ranges=True)
            return self._json(req, {"status": 404, "message": "no such endpoint"}, status=404)

        def _nbia(self, req: Request, endpoint: str, query: dict[str, str]) -> None:
            if endpoint not in NBIA_PARAMS:
                return self._text(req, f"no such endpoint: {endpoint}", 404)
            unknown = sorted(set(query) - NBIA_PARAMS[endpoint])
            if unknown:
                return self._text(req, f"Unrecognized parameter(s) for {endpoint}: {', '.join(unknown)}", 400)
            if endpoint == "getSeries":
                rows = [
                    {k: v for k, v in s.items() if k not in ("zip", "files", "no_md5")}
                    for s in server.series.values()
                    if all(
                        s.get(k) == query[k]
                        for k in ("Collection", "Modality", "PatientID", "StudyInstanceUID")
                        if k in query
                    )
                ]
                return self._json(req, rows)
            uid = query.get("SeriesInstanceUID")
            if not uid:
                return self._text(req, "A parameter, SeriesInstanceUID, is required for this API call.", 400)
            if uid not in server.series:
                return self._text(
                    req, f"Image with given SeriesInstanceUID,{uid}, is not in public domain.", 400
                )
            fault = server._next_fault(uid)
            data = server.series_zip(uid, md5=endpoint == "getImageWithMD5Hash", fault=fault)
            return self._bytes(req, uid, data, "application/zip", ranges=False, fault=fault)

        def _text(self, req: Request, text: str, status: int) -> None:
            self._send(req, text.encode(), "text/plain", status)

        def _json(self, req: Request, obj: object, status: int = 200) -> None:
            self._send(req, json.dumps(obj).encode(), "application/json", status)

        def _send(self, req: Request, body: bytes, ctype: str, status: int) -> None:
            req.status = status
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _bytes(
            self,
            req: Request,
            target: str,
            data: bytes,
            ctype: str,
            *,
            ranges: bool,
            fault: str | None = "next",
        ) -> None:
            if fault == "next":
                fault = server._next_fault(target)
            if fault in ("429", "500", "503"):
                req.status = int(fault)
                self.send_response(req.status)
                if fault == "429":
                    self.send_header("Retry-After", str(server.retry_after))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if fault == "truncate":
                data = data[: len(data) * 6 // 10]
            start = 0
            if req.range and ranges:
                start = int(req.range.split("=")[1].split("-")[0])
                if start >= len(data):
                    req.status = 416
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            body = data[start:]
            req.status = 206 if start else 200
            self.send_response(req.status)
            self.send_header("Content-Type", ctype)
            self.send_header("Accept-Ranges", "bytes" if ranges else "none")
            self.send_header("Content-Length", str(len(body)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if fault == "drop":
                body = body[: len(body) // 2]
            step = 16384
            try:
                for i in range(0, len(body), step):
                    chunk = body[i : i + step]
                    self.wfile.write(chunk)
                    req.sent += len(chunk)
                    if server.rate:
                        time.sleep(len(chunk) / server.rate)
            except (BrokenPipeError, ConnectionResetError):
                return
            if fault == "drop":
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)

    return Handler
