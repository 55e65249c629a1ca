"""/review/{token}: the review page for whoever holds a review link (services/gateway/review_links.py).

GET renders the page; the forms POST (approve/reject a result, send feedback) and answer 303 back to the
page, or JSON when the page's script sends them with fetch (Accept: application/json). Writes go through
the review service (services/gateway/reviews/service.py) with the link's reviewer identity, behind the
double-submit CSRF check (csrf.py). /state is what the page polls while a review round runs.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.gateway import review_links
from services.gateway.campaigns.views import campaign_views
from services.gateway.deps import SessionDep, SettingsDep, StorageDep
from services.gateway.errors import ProblemError
from services.gateway.review_page import csrf, render
from services.gateway.review_page.page import load, who
from services.gateway.reviews import service
from shared.config import Settings
from shared.db.models import TERMINAL_STATUSES, Campaign, Feedback, Result, ResultDecision
from shared.review import Reason, reviewer_for_link
from shared.storage import Storage

router = APIRouter(prefix="/review", tags=["review page"], include_in_schema=False)

MAX_TEXT = 2000

# status, title, what happened, what to do
_LINK_PAGES: dict[review_links.LinkProblem, tuple[int, str, str, str]] = {
    review_links.LinkProblem.INVALID: (
        404,
        "This review link is not valid",
        "The link is incomplete, was changed, or no longer exists.",
        "Copy the whole link from the message you received, or ask the person who sent it for a new one.",
    ),
    review_links.LinkProblem.EXPIRED: (
        410,
        "This review link has expired",
        "Review links work for a limited time, and this one's time is up.",
        "Ask the person who sent it for a new review link.",
    ),
    review_links.LinkProblem.REVOKED: (
        410,
        "This review link was revoked",
        "Whoever manages this campaign switched this link off.",
        "If you still need to review the campaign, ask them for a new link.",
    ),
}


class PageError(Exception):
    """Ends a review-page request with a readable page (or JSON for the page's script); the request's
    transaction rolls back, so nothing half-done is committed."""

    def __init__(self, status: int, title: str, message: str, action: str, code: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message, self.action, self.code = status, title, message, action, code


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


async def _page_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageError)
    if _wants_json(request):
        body = {"code": exc.code, "title": exc.title, "message": exc.message, "action": exc.action}
        return JSONResponse(body, status_code=exc.status, headers={"Cache-Control": "no-store"})
    return render.error_page(exc.status, exc.title, f"{exc.message} {exc.action}".strip(), exc.code)


def install(app: FastAPI) -> None:
    """Mount the page and its error pages on the gateway app."""
    app.add_exception_handler(PageError, _page_error)
    app.include_router(router)


def _open(session: Session, token: str, settings: Settings, *, touch: bool = True) -> review_links.OpenLink:
    try:
        return review_links.resolve(session, token, settings, touch=touch)
    except review_links.LinkError as exc:
        status, title, message, action = _LINK_PAGES[exc.problem]
        raise PageError(status, title, message, action, exc.problem.value) from None


def _check_csrf(request: Request, settings: Settings, link_id: uuid.UUID, token: str | None) -> None:
    try:
        csrf.check(request, settings, link_id, token)
    except csrf.CsrfError as exc:
        raise PageError(403, "This action was refused", str(exc), "", "csrf_failed") from None


def _problem(exc: ProblemError) -> PageError:
    """A review-service refusal (409 review_not_open, 422 reasons_required, ...) in the reviewer's words."""
    detail = str(exc.detail or exc.title)
    return PageError(exc.status_code, exc.title, detail, "", exc.code)


def _reasons(values: list[str] | None) -> list[Reason]:
    try:
        return [Reason(v) for v in dict.fromkeys(values or [])]
    except ValueError:
        message = "One of the reasons is not one this page offers."
        raise PageError(422, "Unknown reason", message, "", "bad_reason") from None


def _text(value: str, what: str) -> str:
    value = value.strip()
    if len(value) > MAX_TEXT:
        message = f"Keep the {what.lower()} under {MAX_TEXT} characters."
        raise PageError(422, f"{what} too long", message, "", "too_long")
    return value


def _done(request: Request, token: str, anchor: str, payload: dict[str, Any]) -> Response:
    if _wants_json(request):
        return JSONResponse(payload, headers={"Cache-Control": "no-store"})
    return RedirectResponse(f"/review/{token}#{anchor}", status_code=303)


def _latest_feedback(session: Session, campaign: Campaign) -> Feedback | None:
    return session.scalars(
        select(Feedback).where(Feedback.campaign_id == campaign.id).order_by(Feedback.review_round.desc()).limit(1)
    ).first()


def state(session: Session, storage: Storage, settings: Settings, campaign: Campaign) -> dict[str, Any]:
    """What the page polls: enough to show progress and to know when the next review round is ready."""
    view = campaign_views(session, storage, settings, [campaign])[0]
    results = session.scalars(
        select(Result.id).where(Result.campaign_id == campaign.id, Result.review_round == campaign.review_round)
    ).all()
    feedback = _latest_feedback(session, campaign)
    return {
        "status": campaign.status.value,
        "review_state": campaign.review_state.value if campaign.review_state else None,
        "review_round": campaign.review_round,
        "round_label": campaign.review_round + 1,
        "current_stage": campaign.current_stage,
        "progress": view.progress,
        "terminal": campaign.status in TERMINAL_STATUSES,
        "results": len(results),
        "feedback": None
        if feedback is None
        else {
            "review_round": feedback.review_round,
            "status": feedback.status.value,
            "not_understood": list(feedback.not_understood or []),
            "error": feedback.error,
        },
    }


@router.get("/{token}")
def review_page(
    token: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    ready: int | None = None,
) -> Response:
    opened = _open(session, token, settings)
    data = load(session, opened.campaign, opened.link.reviewer, storage)
    cookie = csrf.cookie_value(request)
    context = {
        "page": data,
        "token": token,
        "state": state(session, storage, settings, opened.campaign),
        "csrf_field": csrf.FIELD,
        "csrf_token": csrf.form_token(settings, cookie, opened.link.id),
        "ready": ready if ready == opened.campaign.review_round + 1 and data.results else None,
    }
    response = render.page("review.html", 200, context, data.image_origins())
    csrf.set_cookie(response, settings, cookie)
    return response


@router.get("/{token}/state")
def review_state(token: str, session: SessionDep, settings: SettingsDep, storage: StorageDep) -> JSONResponse:
    opened = _open(session, token, settings, touch=False)  # polled every few seconds: no write per poll
    body = state(session, storage, settings, opened.campaign)
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@router.post("/{token}/results/{result_id}/decision")
def decide(
    token: str,
    result_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    decision: Annotated[str, Form()] = "",
    reasons: Annotated[list[str] | None, Form()] = None,
    comment: Annotated[str, Form()] = "",
    csrf_token: Annotated[str | None, Form(alias=csrf.FIELD)] = None,
) -> Response:
    opened = _open(session, token, settings)
    _check_csrf(request, settings, opened.link.id, csrf_token)
    try:
        rid, verdict = uuid.UUID(result_id), ResultDecision(decision)
    except ValueError:
        message = "Choose approve or reject for a result on this page."
        raise PageError(422, "Unknown decision", message, "", "bad_form") from None
    reviewer = reviewer_for_link(opened.link.id, opened.link.reviewer)
    campaign = opened.campaign
    chips, note = _reasons(reasons), _text(comment, "Comment")
    try:
        result = service.decide(session, campaign.tenant_id, campaign.id, rid, verdict, chips, note, reviewer)
    except ProblemError as exc:
        raise _problem(exc) from None
    verb = "Approved" if verdict == ResultDecision.APPROVED else "Rejected"
    payload = {
        "result_id": str(result.id),
        "decision": verdict.value,
        "decided_by": result.decided_by,
        "decided_by_name": who(result.decided_by),
        "review_state": campaign.review_state.value if campaign.review_state else None,
        "message": f"{verb} result {result.rank}.",
    }
    return _done(request, token, f"result-{result.rank}", payload)


@router.post("/{token}/feedback")
def feedback(
    token: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    text: Annotated[str, Form()] = "",
    reasons: Annotated[list[str] | None, Form()] = None,
    csrf_token: Annotated[str | None, Form(alias=csrf.FIELD)] = None,
) -> Response:
    opened = _open(session, token, settings)
    _check_csrf(request, settings, opened.link.id, csrf_token)
    reviewer = reviewer_for_link(opened.link.id, opened.link.reviewer)
    campaign = opened.campaign
    try:
        row = service.submit_feedback(
            session, campaign.tenant_id, campaign.id, _text(text, "Feedback"), _reasons(reasons), reviewer
        )
    except ProblemError as exc:
        raise _problem(exc) from None
    payload = {
        "feedback_id": str(row.id),
        "review_round": row.review_round,
        "status": row.status.value,
        "message": f"Feedback sent: round {row.review_round + 1} is being prepared.",
    }
    return _done(request, token, "feedback", payload)
