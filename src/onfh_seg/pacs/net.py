"""Network side of onfh-pacs: retries with back-off, DICOMweb (QIDO/WADO/STOW) and C-STORE SCU."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydicom import dcmread
from pydicom.dataset import Dataset

from onfh_seg.pacs.study import OUR_MODALITIES

log = logging.getLogger("onfh_seg.pacs")
T = TypeVar("T")


class NetworkError(RuntimeError):
    """A network operation that still failed after its retries (one line)."""


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: connection problems, timeouts, HTTP 5xx/429, failed associations."""
    # function-level import: optional dependency (pacs extra)
    import requests

    if isinstance(exc, requests.HTTPError):
        code = exc.response.status_code if exc.response is not None else None
        return code is None or code >= 500 or code == 429
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError, NetworkError))


def with_retries(fn: Callable[[], T], what: str, retries: int = 4, backoff_s: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """``fn()``, retried on transient errors with back-off ``backoff_s * 2**k``; NetworkError after the last try."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == retries:
                raise NetworkError(f"{what} failed after {retries + 1} tries: {type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
            delay = backoff_s * 2 ** attempt
            log.warning("%s failed (%s); retry %d/%d in %.1f s", what, type(exc).__name__, attempt + 1, retries, delay)
            sleep(delay)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- DICOMweb


@dataclass(frozen=True)
class StudyRef:
    """A study found by QIDO-RS (identifiers only)."""

    study_uid: str
    study_date: str
    accession: str
    modalities: tuple[str, ...]


def _value(item: dict, tag: str) -> Any:
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else ""


def dicomweb_client(url: str, timeout_s: float = 30.0) -> Any:
    """A DICOMweb client for ``url`` (e.g. ``http://orthanc:8042/dicom-web``)."""
    # function-level import: optional dependency (pacs extra)
    import requests
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session

    session: requests.Session = create_session()
    session.request = _with_timeout(session.request, timeout_s)  # type: ignore[method-assign]
    client = DICOMwebClient(url=url.rstrip("/"), session=session)
    # its own retries (any exception, 5 attempts with back-off) would hide failures inside ours: off
    client.set_http_retry_params(retry=False)
    return client


def _with_timeout(request: Callable[..., Any], timeout_s: float) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", timeout_s)
        return request(*args, **kwargs)
    return call


def query_studies(client: Any, study_uid: str | None = None, date_range: tuple[str, str] | None = None,
                  limit: int = 1000) -> list[StudyRef]:
    """QIDO-RS studies by StudyInstanceUID or StudyDate range (YYYYMMDD, either end may be empty)."""
    filters: dict[str, Any] = {}
    if study_uid:
        filters["StudyInstanceUID"] = study_uid
    if date_range:
        filters["StudyDate"] = f"{date_range[0]}-{date_range[1]}"
    found = client.search_for_studies(search_filters=filters, limit=limit,
                                      fields=["StudyDate", "AccessionNumber", "ModalitiesInStudy"])
    out = []
    for item in found:
        mods = (item.get("00080061") or {}).get("Value") or []
        out.append(StudyRef(str(_value(item, "0020000D")), str(_value(item, "00080020")),
                            str(_value(item, "00080050")), tuple(str(m) for m in mods)))
    return sorted(out, key=lambda s: (s.study_date, s.study_uid))


# ask for Explicit VR Little Endian: the server transcodes compressed instances (pixel data the reader can decode)
WADO_MEDIA_TYPES = (("application/dicom", "1.2.840.10008.1.2.1"),)


def _retrieve_series(client: Any, study_uid: str, series_uid: str) -> list[Dataset]:
    """WADO-RS one series as Explicit VR Little Endian, or as stored when the server cannot transcode (406/400)."""
    # function-level import: optional dependency (pacs extra)
    import requests

    try:
        return client.retrieve_series(study_uid, series_uid, media_types=WADO_MEDIA_TYPES)
    except requests.HTTPError as exc:
        if exc.response is None or exc.response.status_code not in (400, 406):
            raise
        return client.retrieve_series(study_uid, series_uid)


def retrieve_study(client: Any, study_uid: str, folder: Path, retries: int = 4, backoff_s: float = 1.0) -> dict[str, int]:
    """WADO-RS every image series of a study (not SEG/SR) into ``folder/<series>/<sop>.dcm``.

    Returns ``{"series": n, "instances": n}``.
    """
    series = with_retries(lambda: client.search_for_series(study_uid, fields=["Modality"]),
                          "QIDO-RS series", retries, backoff_s)
    n_series = n_inst = 0
    for item in series:
        if str(_value(item, "00080060")) in OUR_MODALITIES:
            continue
        series_uid = str(_value(item, "0020000E"))
        datasets = with_retries(lambda: _retrieve_series(client, study_uid, series_uid), "WADO-RS series",
                                retries, backoff_s)
        target = folder / series_uid
        target.mkdir(parents=True, exist_ok=True)
        for ds in datasets:
            ds.save_as(target / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        n_series += 1
        n_inst += len(datasets)
    return {"series": n_series, "instances": n_inst}


def stow(client: Any, files: Sequence[Path], retries: int = 4, backoff_s: float = 1.0) -> list[str]:
    """STOW-RS the files; returns their SOPInstanceUIDs. A rejected instance is a NetworkError (no retry)."""
    datasets = [dcmread(p) for p in files]
    response = with_retries(lambda: client.store_instances(datasets), "STOW-RS", retries, backoff_s)
    failed = response.get("FailedSOPSequence") if response is not None else None
    if failed:
        raise NetworkError(f"STOW-RS rejected {len(failed)} of {len(datasets)} instances")
    return [str(ds.SOPInstanceUID) for ds in datasets]


# ---------------------------------------------------------------- DIMSE


@dataclass(frozen=True)
class Destination:
    """A DICOM node for C-STORE."""

    host: str
    port: int
    ae_title: str

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def c_store(files: Sequence[Path], dest: Destination, calling_ae: str = "ONFH_SEG", retries: int = 4,
            backoff_s: float = 1.0, timeout_s: float = 30.0) -> list[str]:
    """C-STORE the files to ``dest`` (one association, retried as a whole); returns their SOPInstanceUIDs."""
    datasets = [dcmread(p) for p in files]

    def send() -> list[str]:
        # function-level import: optional dependency (pacs extra)
        from pynetdicom import AE

        ae = AE(ae_title=calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
        for ds in datasets:
            ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        if not assoc.is_established:
            raise NetworkError(f"association with {dest} not established")
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None)
                if code is None:
                    raise NetworkError(f"C-STORE to {dest}: no response (connection lost)")
                if code not in (0x0000, 0xB000, 0xB007, 0xB006):
                    raise RuntimeError(f"C-STORE to {dest} refused {ds.SOPClassUID.name}: status 0x{code:04X}")
        finally:
            assoc.release()
        return [str(ds.SOPInstanceUID) for ds in datasets]

    return with_retries(send, f"C-STORE to {dest}", retries, backoff_s)
