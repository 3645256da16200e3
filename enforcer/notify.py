"""Notification delivery: email over SMTP, SMS through an HTTP gateway.

Operator-written subjects, bodies and the gateway's URL/body templates are all
rendered with :func:`rlm_cap.templates.render` (Jinja2's immutable sandbox with
StrictUndefined), so a template can only read the values it is given.

Every failure to deliver raises :class:`SendError`; the enforcer retries it
later and never lets a send block enforcement. Passwords never reach a
``SendError`` message, a log line or the repr of :class:`Smtp` /
:class:`SmsGateway`.
"""

from __future__ import annotations

import base64
import email.policy
import hmac
import http.client
import logging
import re
import smtplib
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

from rlm_cap.templates import render
from rlm_cap.units import format_size

log = logging.getLogger(__name__)

# 7bit transport: a non-ASCII body goes out quoted-printable or base64, so it
# survives relays that do not offer 8BITMIME.
_POLICY = email.policy.SMTP.clone(cte_type="7bit")
_URL_FAULT = re.compile(r"[^\x21-\x7e]")  # what http.client would refuse (or encode badly)
_MAX_DETAIL = 200  # characters of a server's answer quoted in a SendError


class SendError(Exception):
    """A notification could not be delivered; the message says why (never a password)."""


@dataclass(frozen=True)
class Smtp:
    host: str = "127.0.0.1"
    port: int = 25
    starttls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sender: str = "noc@localhost"
    timeout: float = 10.0


@dataclass(frozen=True)
class SmsGateway:
    url: str
    method: str = "POST"
    body: str | None = None
    content_type: str = "application/x-www-form-urlencoded"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 10.0


# --------------------------------------------------------------------------- templates

def notification_context(service: dict, customer: dict, plan_name: str, used: int, size: int) -> dict:
    """What a notification template can use.

    ``service`` and ``customer`` (the rows as given), ``plan`` (the plan's name)
    and ``usage``: ``used``, ``size``, ``remaining`` (never below 0) in bytes,
    ``percent`` (whole percent used, rounded down so it never shows a threshold
    before it is reached; 100 when ``size`` is 0; above 100 on overuse) and
    ``used_text``, ``size_text``, ``remaining_text`` formatted like ``1.5 GB``.
    """
    used, size = int(used), int(size)
    remaining = max(size - used, 0)
    percent = used * 100 // size if size > 0 else 100
    return {
        "service": service,
        "customer": customer,
        "plan": plan_name,
        "usage": {
            "used": used,
            "size": size,
            "remaining": remaining,
            "percent": percent,
            "used_text": format_size(used),
            "size_text": format_size(size),
            "remaining_text": format_size(remaining),
        },
    }


def render_message(subject_template: str, body_template: str, context: dict) -> tuple[str, str]:
    """Render subject and body in the sandbox; ValueError on a broken or unsafe template.

    The subject becomes one line (line breaks turn into spaces, outer blanks go).
    """
    subject = render(subject_template, **context)
    body = render(body_template, **context)
    return _one_line(subject), body


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


# --------------------------------------------------------------------------- secrets

def _scrub(text: str, *secrets: str | None) -> str:
    """``text`` with every secret (and its base64 forms) replaced by ``***``."""
    for secret in secrets:
        if not secret:
            continue
        forms = {secret, base64.b64encode(secret.encode()).decode()}
        for form in sorted(forms, key=len, reverse=True):
            text = text.replace(form, "***")
    return text


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, smtplib.SMTPResponseException):
        answer = error.smtp_error
        if isinstance(answer, bytes):
            answer = answer.decode("utf-8", "replace")
        text = f"{error.smtp_code} {answer}"
    elif isinstance(error, TimeoutError) and "timed out" not in text:
        text = f"timed out {text}"
    return f"{type(error).__name__}: {text[:_MAX_DETAIL * 2]}"


# --------------------------------------------------------------------------- email

def _build_email(smtp: Smtp, to: str, subject: str, body: str) -> EmailMessage:
    if not to or "\r" in to or "\n" in to or "@" not in parseaddr(to)[1]:
        raise SendError(f"invalid email recipient {to!r}")
    domain = parseaddr(smtp.sender)[1].rpartition("@")[2] or "localhost"
    message = EmailMessage(policy=_POLICY)
    try:
        message["From"] = smtp.sender
        message["To"] = to
        message["Subject"] = _one_line(subject)
        message["Date"] = formatdate(localtime=True)
        message["Message-ID"] = make_msgid(domain=domain)  # no getfqdn(): no DNS wait
        message.set_content(body, charset="utf-8")
    except (ValueError, TypeError) as error:
        raise SendError(f"cannot build the email to {to!r}: {error}") from None
    return message


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


class _SMTP(smtplib.SMTP):
    """smtplib.SMTP that sends credentials as UTF-8 (RFC 4616) instead of failing on non-ASCII."""

    def auth(self, mechanism, authobject, *, initial_response_ok=True):
        # smtplib.SMTP.auth with .encode("utf-8") where it has .encode("ascii");
        # _auth_challenge_count is what smtplib's auth_login() reads.
        mechanism = mechanism.upper()
        initial_response = authobject() if initial_response_ok else None
        if initial_response is not None:
            code, resp = self.docmd("AUTH", f"{mechanism} {_b64(initial_response)}")
            self._auth_challenge_count = 1
        else:
            code, resp = self.docmd("AUTH", mechanism)
            self._auth_challenge_count = 0
        while code == 334:
            self._auth_challenge_count += 1
            if self._auth_challenge_count > smtplib._MAXCHALLENGE:
                raise smtplib.SMTPException("server AUTH mechanism loops")
            code, resp = self.docmd(_b64(authobject(base64.decodebytes(resp))))
        if code in (235, 503):
            return code, resp
        raise smtplib.SMTPAuthenticationError(code, resp)

    def auth_cram_md5(self, challenge=None):
        if challenge is None:
            return None
        digest = hmac.HMAC(self.password.encode("utf-8"), challenge, "md5").hexdigest()
        return f"{self.user} {digest}"


def send_email(smtp: Smtp, to: str, subject: str, body: str) -> None:
    """Send one plain-text UTF-8 mail; SendError on any failure.

    Uses STARTTLS (certificate and host name verified against the system's
    trust store, which honours ``SSL_CERT_FILE``) when ``smtp.starttls`` is
    set, and refuses to continue if the server does not offer it. Logs in when
    ``smtp.username`` is set, and refuses to send unauthenticated if the server
    offers no AUTH.
    """
    message = _build_email(smtp, to, subject, body)
    where = f"SMTP {smtp.host}:{smtp.port}"
    try:
        with _SMTP(smtp.host, smtp.port, timeout=smtp.timeout) as client:
            client.ehlo()
            if smtp.starttls:
                client.starttls(context=ssl.create_default_context())
                client.ehlo()
            if smtp.username:
                client.login(smtp.username, smtp.password or "")
            refused = client.send_message(message, from_addr=parseaddr(smtp.sender)[1] or smtp.sender,
                                          to_addrs=[parseaddr(to)[1]])
            if refused:  # pragma: no cover - one recipient: smtplib raises instead
                raise smtplib.SMTPRecipientsRefused(refused)
    except SendError:
        raise
    except (smtplib.SMTPException, OSError, ValueError, UnicodeError) as error:
        # ``from None``: the original exception (and its traceback) stays out of logs.
        detail = _scrub(_describe(error), smtp.password)
        raise SendError(f"email to {to!r} via {where} failed: {detail}") from None
    log.info("email sent to %s via %s", to, where)


# --------------------------------------------------------------------------- SMS

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: it would carry the Authorization header elsewhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: PLR0913
        return None


def _origin(url: str) -> str:
    """scheme://host[:port] of ``url`` - the query holds the phone, text and maybe a key."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    return f"{parts.scheme}://{host}{port}"


def _gateway_request(gateway: SmsGateway, to: str, text: str) -> urllib.request.Request:
    method = gateway.method.upper()
    if method not in ("GET", "POST"):
        raise SendError(f"SMS gateway method must be GET or POST, not {gateway.method!r}")
    try:
        url = render(gateway.url, phone=to, text=text).strip()
        data = None
        if method == "POST":
            if gateway.body is None:
                data = urllib.parse.urlencode({"phone": to, "text": text}).encode()
            else:
                data = render(gateway.body, phone=to, text=text).encode("utf-8")
    except ValueError as error:
        raise SendError(f"SMS gateway template: {error}") from None
    if _URL_FAULT.search(url):
        raise SendError("SMS gateway URL has blanks, control or non-ASCII characters once rendered: "
                        "values in the URL need |urlencode")
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise SendError(f"SMS gateway URL must be http or https, not {_origin(url)!r}")
    request = urllib.request.Request(url, data=data, method=method)
    for name, value in gateway.headers:
        request.add_header(name, value)
    if data is not None:
        request.add_header("Content-Type", gateway.content_type)
    if gateway.username is not None:
        token = base64.b64encode(f"{gateway.username}:{gateway.password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    return request


def send_sms(gateway: SmsGateway, to: str, text: str) -> None:
    """Hand one SMS to the HTTP gateway; a 2xx answer means sent, anything else is SendError.

    ``phone`` and ``text`` are the values the URL and body templates see (use
    ``|urlencode`` in the URL, ``|tojson`` in a JSON body). Redirects are not
    followed. ``timeout`` applies to connecting and to each read.
    """
    request = _gateway_request(gateway, to, text)
    where = _origin(request.full_url)
    secrets = (gateway.password,
               base64.b64encode(f"{gateway.username}:{gateway.password}".encode()).decode()
               if gateway.password else None)
    opener = urllib.request.build_opener(_NoRedirect())
    try:
        with opener.open(request, timeout=gateway.timeout) as response:
            response.read(64 * 1024)  # let the gateway finish its answer
            status = response.status
    except urllib.error.HTTPError as error:
        try:
            answer = error.read(_MAX_DETAIL).decode("utf-8", "replace").strip()
        except (OSError, http.client.HTTPException):
            answer = ""
        finally:
            error.close()
        detail = f"HTTP {error.code} {error.reason}" + (f": {answer}" if answer else "")
        raise SendError(f"SMS to {to!r} via {where} failed: {_scrub(detail, *secrets)}") from None
    except urllib.error.URLError as error:
        reason = error.reason
        detail = _describe(reason) if isinstance(reason, BaseException) else str(reason)
        raise SendError(f"SMS to {to!r} via {where} failed: {_scrub(detail, *secrets)}") from None
    except http.client.InvalidURL:  # its message quotes the URL: phone, text, maybe a key
        raise SendError(f"SMS to {to!r} via {where} failed: invalid URL once rendered") from None
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise SendError(f"SMS to {to!r} via {where} failed: {_scrub(_describe(error), *secrets)}") from None
    if not 200 <= status < 300:  # pragma: no cover - urllib raises HTTPError for these
        raise SendError(f"SMS to {to!r} via {where} failed: HTTP {status}")
    log.info("SMS sent to %s via %s", to, where)
