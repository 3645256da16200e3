"""enforcer.notify against real local servers: aiosmtpd for SMTP, http.server as SMS gateway."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import socket
import ssl
import subprocess
import time
import urllib.parse
from email.utils import parsedate_to_datetime

import pytest

from .conftest import PASSWORD, free_port
from enforcer.notify import (SendError, SmsGateway, Smtp, notification_context, render_message,
                             send_email, send_sms)

pytestmark = pytest.mark.filterwarnings(
    "ignore:Requiring AUTH while not requiring TLS:UserWarning")  # auth_require_tls=False on purpose

GW_PASSWORD = "gw-s3cr3t:ü"
UNICODE_TEXT = "Hallo Welt & mehr: 85 % verbraucht – Grüße 😀 a+b=c/d?x#y"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """A proxy from the environment must not sit between the tests and 127.0.0.1."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------- email

def test_email_is_delivered_with_headers_and_utf8_body(smtp_server):
    port, inbox = smtp_server()
    smtp = Smtp(port=port, sender="ISP NOC <noc@isp.example>", timeout=5)
    body = f"Liebe Kundin,\n\n{UNICODE_TEXT}\n\nIhr NOC\n"
    send_email(smtp, "kunde@example.org", "Datenvolumen zu 85 % verbraucht – Grüße", body)

    assert len(inbox.envelopes) == 1
    envelope = inbox.envelopes[0]
    assert envelope.mail_from == "noc@isp.example"
    assert envelope.rcpt_tos == ["kunde@example.org"]
    message = inbox.message()
    assert message["From"] == "ISP NOC <noc@isp.example>"
    assert message["To"] == "kunde@example.org"
    assert message["Subject"] == "Datenvolumen zu 85 % verbraucht – Grüße"
    assert abs(time.time() - parsedate_to_datetime(message["Date"]).timestamp()) < 60
    assert message["Message-ID"].startswith("<") and message["Message-ID"].endswith("@isp.example>")
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert inbox.body() == body
    # 7-bit safe on the wire: the raw message is ASCII even though the text is not.
    envelope.content.decode("ascii")


def test_two_emails_get_distinct_message_ids(smtp_server):
    port, inbox = smtp_server()
    for _ in range(2):
        send_email(Smtp(port=port, timeout=5), "a@example.org", "s", "b")
    assert inbox.message(0)["Message-ID"] != inbox.message(1)["Message-ID"]


def test_multiline_subject_becomes_one_header_line(smtp_server):
    port, inbox = smtp_server()
    send_email(Smtp(port=port, timeout=5), "a@example.org", "first\nBcc: evil@example.org\n", "b")
    message = inbox.message()
    assert message["Subject"] == "first Bcc: evil@example.org"
    assert message["Bcc"] is None
    assert inbox.envelopes[0].rcpt_tos == ["a@example.org"]


@pytest.mark.parametrize("to", ["a@example.org\r\nBcc: evil@example.org", "", "not-an-address"])
def test_invalid_recipient_is_a_send_error(smtp_server, to):
    port, inbox = smtp_server()
    with pytest.raises(SendError, match="recipient"):
        send_email(Smtp(port=port, timeout=5), to, "s", "b")
    assert inbox.envelopes == []


def test_refused_recipient_is_a_send_error(smtp_server):
    port, inbox = smtp_server()
    with pytest.raises(SendError, match="550"):
        send_email(Smtp(port=port, timeout=5), "nobody@example.org", "s", "b")
    assert inbox.envelopes == []


@pytest.mark.parametrize("mechanism", ["LOGIN", "PLAIN"])
def test_auth_login_and_plain(smtp_server, mechanism, caplog):
    other = {"LOGIN": "PLAIN", "PLAIN": "LOGIN"}[mechanism]
    port, inbox = smtp_server(auth=True, auth_require_tls=False, auth_exclude_mechanism=[other])
    caplog.set_level(logging.DEBUG)
    send_email(Smtp(port=port, username="noc", password=PASSWORD, timeout=5), "a@example.org", "s", "b")
    assert inbox.logins == [(mechanism, "noc", PASSWORD)]
    assert len(inbox.envelopes) == 1
    assert PASSWORD not in caplog.text


def test_wrong_password_is_a_send_error_without_the_password(smtp_server, caplog):
    port, inbox = smtp_server(auth=True, auth_require_tls=False)
    caplog.set_level(logging.DEBUG)
    wrong = "wr0ng-" + PASSWORD
    smtp = Smtp(port=port, username="noc", password=wrong, timeout=5)
    with pytest.raises(SendError) as caught:
        send_email(smtp, "a@example.org", "s", "b")
    text = str(caught.value)
    assert "535" in text
    assert wrong not in text and PASSWORD not in text
    assert base64.b64encode(wrong.encode()).decode() not in text
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert wrong not in caplog.text
    assert inbox.envelopes == [] and inbox.logins == []


def test_server_requiring_auth_rejects_unauthenticated_send(smtp_server):
    port, inbox = smtp_server(auth=True, auth_require_tls=False)
    with pytest.raises(SendError, match="530"):
        send_email(Smtp(port=port, timeout=5), "a@example.org", "s", "b")
    assert inbox.envelopes == []


def test_username_without_server_auth_support_is_a_send_error(smtp_server):
    port, inbox = smtp_server()  # no authenticator: the server offers no AUTH
    with pytest.raises(SendError, match="AUTH"):
        send_email(Smtp(port=port, username="noc", password=PASSWORD, timeout=5), "a@example.org", "s", "b")
    assert inbox.envelopes == []


def test_refused_connection_is_a_send_error():
    port = free_port()  # nothing listens there any more
    smtp = Smtp(port=port, username="noc", password=PASSWORD, timeout=2)
    with pytest.raises(SendError) as caught:
        send_email(smtp, "a@example.org", "s", "b")
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "Connection" in str(caught.value) or "refused" in str(caught.value).lower()
    assert PASSWORD not in str(caught.value)


def test_silent_server_times_out_as_send_error():
    with socket.socket() as listener:  # accepts TCP (backlog) but never greets
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        port = listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(SendError, match="timed out"):
            send_email(Smtp(port=port, timeout=0.3), "a@example.org", "s", "b")
        assert time.monotonic() - started < 3


def test_starttls_requested_but_not_offered_is_a_send_error(smtp_server):
    port, inbox = smtp_server()
    with pytest.raises(SendError, match="STARTTLS"):
        send_email(Smtp(port=port, starttls=True, timeout=5), "a@example.org", "s", "b")
    assert inbox.envelopes == []


def test_repr_hides_passwords():
    smtp = Smtp(username="noc", password=PASSWORD)
    gateway = SmsGateway(url="http://127.0.0.1/", username="gw", password=GW_PASSWORD)
    assert PASSWORD not in repr(smtp) and "password" not in repr(smtp)
    assert GW_PASSWORD not in repr(gateway) and "password" not in repr(gateway)
    assert "noc" in repr(smtp) and "gw" in repr(gateway)


# --------------------------------------------------------------------------- STARTTLS

@pytest.fixture
def tls_files(tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed: cannot make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-addext", "basicConstraints=critical,CA:TRUE"],
        check=True, capture_output=True, timeout=20)
    return cert, key


def _server_context(cert, key) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def test_starttls_then_auth_with_trusted_self_signed_certificate(smtp_server, tls_files, monkeypatch):
    cert, key = tls_files
    # The client trusts the system store; an operator adds a private CA via SSL_CERT_FILE.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    port, inbox = smtp_server(auth=True, tls_context=_server_context(cert, key), require_starttls=True)
    smtp = Smtp(port=port, starttls=True, username="noc", password=PASSWORD, timeout=5)
    send_email(smtp, "a@example.org", "über TLS", "verschlüsselt")
    assert inbox.logins and inbox.logins[0][1:] == ("noc", PASSWORD)
    assert inbox.message()["Subject"] == "über TLS"
    assert inbox.body() == "verschlüsselt\n"


def test_starttls_with_untrusted_certificate_is_a_send_error(smtp_server, tls_files, monkeypatch):
    cert, key = tls_files
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files[0].parent / "missing.pem"))
    port, inbox = smtp_server(auth=True, tls_context=_server_context(cert, key), require_starttls=True)
    smtp = Smtp(port=port, starttls=True, username="noc", password=PASSWORD, timeout=5)
    with pytest.raises(SendError, match="(?i)certificate") as caught:
        send_email(smtp, "a@example.org", "s", "b")
    assert PASSWORD not in str(caught.value)
    assert inbox.envelopes == [] and inbox.logins == []


# --------------------------------------------------------------------------- SMS gateway

URL_TEMPLATE = "/send?to={{ phone|urlencode }}&text={{ text|urlencode }}"


def test_sms_get_with_url_encoded_values(gateway):
    sms = SmsGateway(url=gateway.base + URL_TEMPLATE, method="GET", timeout=5)
    send_sms(sms, "+49 170 1234567", UNICODE_TEXT)
    [request] = gateway.requests
    assert request["method"] == "GET"
    assert request["body"] == b""
    assert request["route"] == "/send"
    assert request["query"] == {"to": ["+49 170 1234567"], "text": [UNICODE_TEXT]}
    assert " " not in request["path"] and "+" not in request["path"]  # '+' must be %2B, not a space


def test_sms_get_method_is_case_insensitive(gateway):
    send_sms(SmsGateway(url=gateway.base + URL_TEMPLATE, method="get", timeout=5), "1", "x")
    assert gateway.requests[0]["method"] == "GET"


def test_sms_url_without_urlencode_is_a_send_error(gateway):
    sms = SmsGateway(url=gateway.base + "/send?to={{ phone }}&text={{ text }}", method="GET", timeout=5)
    with pytest.raises(SendError, match="urlencode"):
        send_sms(sms, "+49 170", "two words")
    assert gateway.requests == []


def test_sms_post_form_encoded_by_default(gateway):
    sms = SmsGateway(url=gateway.base + "/send", timeout=5)
    send_sms(sms, "+491701234567", UNICODE_TEXT)
    [request] = gateway.requests
    assert request["method"] == "POST"
    assert request["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert urllib.parse.parse_qs(request["body"].decode("ascii")) == {
        "phone": ["+491701234567"], "text": [UNICODE_TEXT]}


def test_sms_post_json_body_template_with_headers(gateway):
    sms = SmsGateway(url=gateway.base + "/api/sms",
                     body='{"to": {{ phone|tojson }}, "text": {{ text|tojson }}, "from": "ISP"}',
                     content_type="application/json", headers=(("X-Api-Key", "k-123"),), timeout=5)
    text = UNICODE_TEXT + ' "quoted" <b>'
    send_sms(sms, "+491701234567", text)
    [request] = gateway.requests
    assert request["route"] == "/api/sms"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["X-Api-Key"] == "k-123"
    assert json.loads(request["body"]) == {"to": "+491701234567", "text": text, "from": "ISP"}


def test_sms_basic_auth_header(gateway):
    sms = SmsGateway(url=gateway.base + "/send", username="gw", password=GW_PASSWORD, timeout=5)
    send_sms(sms, "1", "x")
    authorization = gateway.requests[0]["headers"]["Authorization"]
    assert authorization.startswith("Basic ")
    assert base64.b64decode(authorization[6:]).decode() == f"gw:{GW_PASSWORD}"


def test_sms_server_error_is_a_send_error_without_the_password(gateway, caplog):
    gateway.status, gateway.answer = 500, b"gateway broke"
    caplog.set_level(logging.DEBUG)
    sms = SmsGateway(url=gateway.base + URL_TEMPLATE, method="GET", username="gw", password=GW_PASSWORD,
                     timeout=5)
    with pytest.raises(SendError) as caught:
        send_sms(sms, "+491701234567", "secret text of the customer")
    text = str(caught.value)
    assert "500" in text and "gateway broke" in text
    assert GW_PASSWORD not in text
    assert base64.b64encode(f"gw:{GW_PASSWORD}".encode()).decode() not in text
    assert "secret text" not in text  # the query (text, maybe an API key) is not quoted
    assert GW_PASSWORD not in caplog.text


@pytest.mark.parametrize("status", [400, 404, 503])
def test_sms_other_non_2xx_are_send_errors(gateway, status):
    gateway.status = status
    with pytest.raises(SendError, match=str(status)):
        send_sms(SmsGateway(url=gateway.base + "/send", timeout=5), "1", "x")


def test_sms_accepts_any_2xx(gateway):
    gateway.status, gateway.answer = 202, b"queued"
    send_sms(SmsGateway(url=gateway.base + "/send", timeout=5), "1", "x")
    assert len(gateway.requests) == 1


def test_sms_redirect_is_not_followed(gateway):
    sms = SmsGateway(url=gateway.base + "/redirect", username="gw", password=GW_PASSWORD, timeout=5)
    with pytest.raises(SendError, match="302"):
        send_sms(sms, "1", "x")
    assert [r["route"] for r in gateway.requests] == ["/redirect"]


def test_sms_timeout_is_a_send_error(gateway):
    gateway.delay = 10  # released when the fixture ends
    sms = SmsGateway(url=gateway.base + "/send", timeout=0.2)
    started = time.monotonic()
    with pytest.raises(SendError, match="timed out"):
        send_sms(sms, "1", "x")
    assert time.monotonic() - started < 3


def test_sms_refused_connection_is_a_send_error():
    sms = SmsGateway(url=f"http://127.0.0.1:{free_port()}/send", password=GW_PASSWORD, username="gw",
                     timeout=2)
    with pytest.raises(SendError, match="refused") as caught:
        send_sms(sms, "1", "x")
    assert GW_PASSWORD not in str(caught.value)


@pytest.mark.parametrize("gateway_args, match", [
    ({"url": "file:///etc/passwd"}, "http or https"),
    ({"url": "http://127.0.0.1/", "method": "PUT"}, "GET or POST"),
    ({"url": "http://127.0.0.1/{{ phone"}, "template"),
    ({"url": "http://127.0.0.1/", "body": "{{ nothing_like_this }}"}, "template"),
])
def test_sms_configuration_faults_are_send_errors(gateway_args, match):
    with pytest.raises(SendError, match=match):
        send_sms(SmsGateway(timeout=1, **gateway_args), "1", "x")


# --------------------------------------------------------------------------- templates

SERVICE = {"id": 7, "username": "dsl-0042", "plan": "Home 100"}
CUSTOMER = {"id": 3, "name": "Jürgen Müller", "email": "j@example.org", "phone": "+491701234567"}
GB = 10**9


def test_notification_context_values():
    context = notification_context(SERVICE, CUSTOMER, "Home 100", 850_000_000, 1 * GB)
    assert context["service"] == SERVICE and context["customer"] == CUSTOMER
    assert context["plan"] == "Home 100"
    assert context["usage"] == {
        "used": 850_000_000, "size": GB, "remaining": 150_000_000, "percent": 85,
        "used_text": "850 MB", "size_text": "1 GB", "remaining_text": "150 MB"}


@pytest.mark.parametrize("used, size, percent, remaining, remaining_text", [
    (799_999_999, GB, 79, 200_000_001, "200 MB"),  # rounded down: 80 % is not shown before it is reached
    (GB, GB, 100, 0, "0 B"),
    (1_500_000_000, GB, 150, 0, "0 B"),  # overuse: remaining never negative
    (0, 0, 100, 0, "0 B"),  # nothing to use is all used
    (0, 10 * GB, 0, 10 * GB, "10 GB"),
])
def test_notification_context_edges(used, size, percent, remaining, remaining_text):
    usage = notification_context(SERVICE, CUSTOMER, "p", used, size)["usage"]
    assert (usage["percent"], usage["remaining"], usage["remaining_text"]) == (percent, remaining, remaining_text)
    assert isinstance(usage["percent"], int)


def test_render_message():
    context = notification_context(SERVICE, CUSTOMER, "Home 100", 1_500_000_000, 2 * GB)
    subject, body = render_message(
        "{{ usage.percent }} % von {{ plan }} verbraucht\n",
        "Hallo {{ customer.name }},\n{{ service.username }}: {{ usage.used_text }} von "
        "{{ usage.size_text }}, noch {{ usage.remaining_text }}.",
        context)
    assert subject == "75 % von Home 100 verbraucht"
    assert body == "Hallo Jürgen Müller,\ndsl-0042: 1.5 GB von 2 GB, noch 500 MB."


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__ }}",
    "{{ customer.__class__.__mro__[1].__subclasses__() }}",
    "{{ customer.update({'name': 'x'}) }}",  # the sandbox is immutable
])
def test_render_message_blocks_sandbox_escapes(template):
    context = notification_context(dict(SERVICE), dict(CUSTOMER), "p", 1, 2)
    with pytest.raises(ValueError, match="unsafe|not safely|SecurityError"):
        render_message("s", template, context)
    with pytest.raises(ValueError):
        render_message(template, "b", context)
    assert context["customer"] == CUSTOMER


@pytest.mark.parametrize("template", ["{{ usage.percent ", "{% if %}", "{{ no_such_value }}",
                                      "{{ usage.nope }}"])
def test_render_message_broken_template_is_value_error(template):
    context = notification_context(SERVICE, CUSTOMER, "p", 1, 2)
    with pytest.raises(ValueError):
        render_message(template, "b", context)
    with pytest.raises(ValueError):
        render_message("s", template, context)


def test_rendered_notification_goes_out_by_email(smtp_server):
    port, inbox = smtp_server()
    context = notification_context(SERVICE, CUSTOMER, "Home 100", 900_000_000, GB)
    subject, body = render_message("{{ usage.percent }} % verbraucht", "Noch {{ usage.remaining_text }}.", context)
    send_email(Smtp(port=port, timeout=5), CUSTOMER["email"], subject, body)
    assert inbox.message()["Subject"] == "90 % verbraucht"
    assert inbox.body() == "Noch 100 MB.\n"
