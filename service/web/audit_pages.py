"""The audit pages of the web viewer: the audits, one audit by patient, one follow-up, its files.

An audit spans every patient of the site, like the DICOM node's studies, so every page here
needs a session of a key with the ``admin`` scope; other keys get a 403 page. The volume plots
are SVG drawn on the server (:mod:`service.web.volume_plot`): no script, nothing fetched. Names in
the URLs are checked and every path resolved inside its audit (:mod:`service.web.audits`);
anything else is the 404 page.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, HTMLResponse
from markupsafe import Markup

from service.api.deps import SettingsDep
from service.web import audits
from service.web.audit_report import read_report
from service.web.audits import AuditNotFound
from service.web.pages import SECURITY_HEADERS, page, page_context
from service.web.session import page_session
from service.web.volume_plot import volume_svg
from worker.audit.rows import SUCCEEDED
from worker.audit.trends import finite_float
from worker.stages.export.files import MEDIA_TYPES, OUTPUT_FILES

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

#: Dose figures of each follow-up row on the audit page: (column, heading, decimals).
DOSE_COLUMNS = (
    ("lesion_dmean_gy", "Dmean (Gy)", 1),
    ("lesion_dmax_gy", "Dmax (Gy)", 1),
    ("lesion_d2cc_gy", "D2cc (Gy)", 1),
    ("lesion_v60gy_pct", "V60 (%)", 0),
)
#: Shown in the browser; the DICOM objects and the report are saved.
INLINE_FILES = frozenset({OUTPUT_FILES["preview"]})


@router.get("/ui/audits")
def read_audits(request: Request, settings: SettingsDep) -> HTMLResponse:
    """The audits under the audit root, with their counts."""
    context, refused = _admin_context(request)
    if refused is not None:
        return refused
    context.update(audits=audits.list_audits(settings.audits_folder), root=settings.audits_folder)
    return page(request, "audits.html", context)


@router.get("/ui/audits/{name}")
def read_audit(request: Request, name: str, settings: SettingsDep) -> HTMLResponse:
    """One audit: its patients with their volume plots, and every follow-up."""
    context, refused = _admin_context(request)
    if refused is not None:
        return refused
    try:
        folder = audits.audit_folder(settings.audits_folder, name)
    except AuditNotFound:
        return _not_found(request, context, f"There is no audit named {name!r} here.")
    rows = audits.read_rows(folder)
    patients = audits.patients(rows.rows)
    context.update(
        name=name,
        last_run=audits.last_run(folder),
        rows=rows,
        failed=sum(row.get("status") != SUCCEEDED for row in rows.rows),
        patients=[(patient, _plot(patient)) for patient in patients],
        with_ids=any(patient.patient_id for patient in patients),
        dose_columns=DOSE_COLUMNS,
        number=_number,
    )
    return page(request, "audit.html", context)


@router.get("/ui/audits/{name}/followups/{patient}/{item}")
def read_audit_followup(
    request: Request, name: str, patient: str, item: str, settings: SettingsDep
) -> HTMLResponse:
    """One follow-up: its report's figures, its preview and its downloads."""
    context, refused = _admin_context(request)
    if refused is not None:
        return refused
    try:
        audit = audits.audit_folder(settings.audits_folder, name)
        folder = audits.followup_folder(audit, patient, item)
    except AuditNotFound:
        return _not_found(request, context, f"Audit {name!r} has no follow-up {item!r} of {patient!r}.")
    report, report_problem = read_report(folder)
    context.update(
        name=name,
        patient=patient,
        item=item,
        row=audits.find_row(audits.read_rows(audit).rows, patient, item),
        report=report,
        report_problem=report_problem,
        files=[file for file in OUTPUT_FILES.values() if _present(folder, file)],
        preview=OUTPUT_FILES["preview"],
        number=_number,
    )
    return page(request, "audit_followup.html", context)


@router.get("/ui/audits/{name}/followups/{patient}/{item}/{file}")
def read_audit_file(
    request: Request, name: str, patient: str, item: str, file: str, settings: SettingsDep
) -> Response:
    """One output file of a follow-up: the preview shown, the others downloaded."""
    context, refused = _admin_context(request)
    if refused is not None:
        return refused
    try:
        audit = audits.audit_folder(settings.audits_folder, name)
        path = audits.output_file(audits.followup_folder(audit, patient, item), file)
    except AuditNotFound:
        return _not_found(request, context, f"Audit {name!r} has no such file of follow-up {item!r}.")
    response = FileResponse(
        path,
        media_type=MEDIA_TYPES[audits.OUTPUT_NAMES[file]],
        filename=f"{item}_{file}",
        content_disposition_type="inline" if file in INLINE_FILES else "attachment",
    )
    response.headers.update(SECURITY_HEADERS)
    return response


# --- helpers ----------------------------------------------------------------------------------


def _admin_context(request: Request) -> tuple[dict[str, Any], HTMLResponse | None]:
    """The page context of a signed-in caller, and the 403 page when the key is not an admin's.

    Raises
    ------
    LoginRequired
        No valid session (answered by a redirect to the login page).
    """
    caller, web_session = page_session(request)
    context = page_context(request, caller, web_session)
    if caller.is_admin:
        return context, None
    log.info("audit pages refused to key %s (no admin scope)", caller.owner)
    detail = "Audits span every patient of the site: they need a key with the admin scope."
    refused = page(request, "error.html", {**context, "title": "Not allowed", "detail": detail}, 403)
    return context, refused


def _not_found(request: Request, context: dict[str, Any], detail: str) -> HTMLResponse:
    return page(request, "error.html", {**context, "title": "Not found", "detail": detail}, 404)


def _plot(patient: audits.PatientView) -> Markup | None:
    return volume_svg(patient.series(), patient.x_label, f"Lesion volume of {patient.alias} over time")


def _present(folder: Path, file: str) -> bool:
    try:
        audits.output_file(folder, file)
    except AuditNotFound:
        return False
    return True


def _number(value: Any, decimals: int) -> str:
    """A figure for a table cell: fixed decimals, "–" when there is none."""
    number = finite_float(value)
    return "–" if number is None else f"{number:.{decimals}f}"
