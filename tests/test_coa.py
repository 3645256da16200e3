"""The CoA/Disconnect client against a simulated RouterOS NAS on loopback."""

from __future__ import annotations

import hashlib
import hmac
import logging
import socket
import time
from importlib.resources import files

import pytest
from pyrad import packet

from enforcer import coa
from enforcer.coa import ACK, NAK, SESSION_NOT_FOUND, TIMEOUT, Client, Nas, Session
from cli.lab import NasSimulator

SECRET = "Zq7-sekrit-4711"
SESSION = Session("alice@isp", "81a00005", framed_ip="10.0.0.7", nas_ip="192.0.2.1")


@pytest.fixture
def sim():
    with NasSimulator(secret=SECRET) as simulator:
        yield simulator


@pytest.fixture
def nas(sim):
    return Nas("127.0.0.1", SECRET, coa_port=sim.port)


@pytest.fixture
def client():
    return Client(timeout=0.2, retries=3, backoff=0.02)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- what is sent ------------------------------------------------------------

def test_coa_identifies_the_session_and_carries_the_rate(client, nas, sim):
    result = client.change_rate(nas, SESSION, "5M/10M")

    assert result.outcome == ACK
    [request] = sim.requests
    assert request["code"] == packet.CoARequest
    attributes = request["attributes"]
    assert attributes["User-Name"] == ["alice@isp"]
    assert attributes["Acct-Session-Id"] == ["81a00005"]
    assert attributes["Framed-IP-Address"] == ["10.0.0.7"]
    assert attributes["NAS-IP-Address"] == ["192.0.2.1"]
    assert attributes["Mikrotik-Rate-Limit"] == ["5M/10M"]
    assert request["authenticator_valid"]


def test_disconnect_identifies_the_session(client, nas, sim):
    result = client.disconnect(nas, SESSION)

    assert result.outcome == ACK
    [request] = sim.requests
    assert request["code"] == packet.DisconnectRequest
    attributes = request["attributes"]
    assert attributes["User-Name"] == ["alice@isp"]
    assert attributes["Acct-Session-Id"] == ["81a00005"]
    assert attributes["Framed-IP-Address"] == ["10.0.0.7"]
    assert attributes["NAS-IP-Address"] == ["192.0.2.1"]
    assert "Mikrotik-Rate-Limit" not in attributes


def test_unknown_addresses_are_left_out(client, nas, sim):
    client.disconnect(nas, Session("bob", "1f"))

    [request] = sim.requests
    assert set(request["attributes"]) == {"Message-Authenticator", "User-Name", "Acct-Session-Id"}


def test_every_request_carries_a_valid_message_authenticator(client, nas, sim):
    client.change_rate(nas, SESSION, "1M/2M")
    client.disconnect(nas, SESSION)
    sim.behaviour = "silent"
    client.change_rate(nas, SESSION, "1M/2M")  # three retransmissions

    requests = sim.requests
    assert len(requests) == 5
    for request in requests:
        assert request["message_authenticator"] is True
        assert request["message_authenticator_valid"] is True
        assert request["authenticator_valid"] is True


def test_authenticators_follow_rfc_5176_checked_without_pyrad(client, nas, sim):
    """Guards against pyrad signing and verifying wrongly in the same way."""
    client.change_rate(nas, SESSION, "1M/2M")
    raw = sim.requests[0]["raw"]
    header, authenticator, attributes = raw[:4], raw[4:20], raw[20:]

    assert hashlib.md5(header + bytes(16) + attributes + SECRET.encode()).digest() == authenticator
    assert attributes[:2] == bytes([80, 18])  # Message-Authenticator first, 16 octets
    zeroed = attributes[:2] + bytes(16) + attributes[18:]
    expected = hmac.new(SECRET.encode(), header + bytes(16) + zeroed, "md5").digest()
    assert attributes[2:18] == expected


def test_a_bad_ip_address_is_a_value_error_without_the_secret(client, nas, sim):
    with pytest.raises(ValueError) as raised:
        client.change_rate(nas, Session("bob", "1f", framed_ip="10.0.0.300"), "1M/2M")
    assert SECRET not in str(raised.value)
    assert sim.requests == []


# -- how answers map to results ------------------------------------------------

@pytest.mark.parametrize("send", ["coa", "disconnect"])
def test_ack(client, nas, sim, send):
    result = client.change_rate(nas, SESSION, "1M/2M") if send == "coa" else client.disconnect(nas, SESSION)

    assert (result.outcome, result.error_cause, result.session_gone) == (ACK, None, False)
    assert result.detail == ("CoA-ACK" if send == "coa" else "Disconnect-ACK")


@pytest.mark.parametrize("send", ["coa", "disconnect"])
def test_nak_for_an_unknown_session_means_it_is_gone(client, nas, sim, send):
    sim.behaviour = "nak"  # Error-Cause 503 by default

    result = client.change_rate(nas, SESSION, "1M/2M") if send == "coa" else client.disconnect(nas, SESSION)

    assert (result.outcome, result.error_cause) == (NAK, SESSION_NOT_FOUND)
    assert result.session_gone
    assert "NAK Session-Context-Not-Found (503)" in result.detail
    assert len(sim.requests) == 1  # a NAK is an answer: no retransmission


def test_nak_with_another_cause(client, nas, sim):
    sim.behaviour, sim.error_cause = "nak", 404

    result = client.change_rate(nas, SESSION, "1M/2M")

    assert (result.outcome, result.error_cause, result.session_gone) == (NAK, 404, False)
    assert result.detail == "CoA-NAK Invalid-Request (404)"


def test_nak_with_a_cause_the_dictionary_does_not_name(client, nas, sim):
    sim.behaviour, sim.error_cause = "nak", 599

    result = client.disconnect(nas, SESSION)

    assert (result.outcome, result.error_cause) == (NAK, 599)
    assert result.detail == "Disconnect-NAK Error-Cause 599"


def test_behaviour_changes_at_runtime(client, nas, sim):
    assert client.disconnect(nas, SESSION).outcome == ACK
    sim.behaviour = "nak"
    assert client.disconnect(nas, SESSION).session_gone
    sim.behaviour = "ack"
    assert client.disconnect(nas, SESSION).outcome == ACK


# -- no (valid) answer ---------------------------------------------------------

@pytest.mark.parametrize("retries", [1, 3])
def test_silent_nas_times_out_after_all_attempts(nas, sim, retries):
    sim.behaviour = "silent"
    client = Client(timeout=0.2, retries=retries, backoff=0.02)

    result = client.change_rate(nas, SESSION, "1M/2M")

    assert result.outcome == TIMEOUT and result.error_cause is None
    assert f"after {retries} attempts" in result.detail
    requests = sim.requests
    assert len(requests) == retries
    # retransmissions are the same packet, so a late reply to any of them counts
    assert len({request["id"] for request in requests}) == 1


def test_attempts_wait_timeout_and_back_off_exponentially(nas, sim):
    sim.behaviour = "silent"
    client = Client(timeout=0.2, retries=3, backoff=0.1)

    started = time.monotonic()
    client.disconnect(nas, SESSION)
    elapsed = time.monotonic() - started

    assert 0.9 <= elapsed < 2.0  # 3 × 0.2 s waiting + 0.1 s + 0.2 s pauses


@pytest.mark.parametrize("behaviour", ["bad-authenticator", "bad-message-authenticator"])
def test_a_reply_that_does_not_verify_is_ignored(client, nas, sim, behaviour):
    sim.behaviour = behaviour

    result = client.change_rate(nas, SESSION, "1M/2M")

    assert result.outcome == TIMEOUT
    assert len(sim.requests) == 3
    assert "3 invalid replies ignored" in result.detail


def test_a_wrong_secret_is_dropped_by_the_nas(client, sim):
    result = client.disconnect(Nas("127.0.0.1", "not-the-secret", coa_port=sim.port), SESSION)

    assert result.outcome == TIMEOUT
    requests = sim.requests
    assert len(requests) == 3
    assert not any(request["authenticator_valid"] for request in requests)
    assert not any(request["message_authenticator_valid"] for request in requests)


def test_nothing_listening_is_a_timeout_not_an_exception(client):
    nas = Nas("127.0.0.1", SECRET, coa_port=free_udp_port())

    result = client.disconnect(nas, SESSION)

    assert result.outcome == TIMEOUT
    assert "port unreachable" in result.detail


def test_a_network_error_is_a_timeout_and_hides_the_secret(client, monkeypatch):
    def failing_getaddrinfo(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, f"cannot resolve, secret {SECRET}")
    monkeypatch.setattr(coa.socket, "getaddrinfo", failing_getaddrinfo)

    result = client.change_rate(Nas("nas.example", SECRET), SESSION, "1M/2M")

    assert result.outcome == TIMEOUT
    assert "network error" in result.detail
    assert SECRET not in result.detail


# -- ports and NAS types ---------------------------------------------------------

def test_coa_port_is_honoured(sim):
    client = Client(timeout=0.1, retries=1)
    assert Nas("127.0.0.1", SECRET).coa_port == 3799  # RFC 5176's port by default

    on_routeros_port = client.disconnect(Nas("127.0.0.1", SECRET, coa_port=sim.port), SESSION)
    assert on_routeros_port.outcome == ACK
    assert len(sim.requests) == 1

    if sim.port != 3799:
        client.disconnect(Nas("127.0.0.1", SECRET), SESSION)  # to 3799: not the simulator
        assert len(sim.requests) == 1


def test_simulator_on_a_fixed_port():
    port = free_udp_port()
    with NasSimulator(secret=SECRET, port=port) as sim:
        assert sim.port == port
        result = Client(timeout=0.2).disconnect(Nas("127.0.0.1", SECRET, coa_port=port), SESSION)
    assert result.outcome == ACK


@pytest.fixture
def acme_dictionary(tmp_path):
    """rlm_cap's dictionary plus a second vendor with its own rate attribute."""
    path = tmp_path / "dictionary"
    path.write_text((files("rlm_cap") / "dictionary").read_text() + "\n"
                    "VENDOR\t\tAcme\t\t99999\n"
                    "BEGIN-VENDOR\tAcme\n"
                    "ATTRIBUTE\tAcme-Rate\t1\tstring\n"
                    "END-VENDOR\tAcme\n")
    return str(path)


@pytest.mark.parametrize("nas_type, attribute", [
    ("mikrotik", "Mikrotik-Rate-Limit"),
    ("acme", "Acme-Rate"),
    ("something-else", "Mikrotik-Rate-Limit"),  # unknown types fall back to MikroTik's
])
def test_rate_attribute_by_nas_type(acme_dictionary, nas_type, attribute):
    client = Client(timeout=0.2, rate_attributes={"acme": "Acme-Rate"}, dictionary=acme_dictionary)
    assert client.rate_attribute(nas_type) == attribute

    with NasSimulator(secret=SECRET, dictionary_path=acme_dictionary) as sim:
        result = client.change_rate(Nas("127.0.0.1", SECRET, sim.port, nas_type), SESSION, "2M/4M")
        [request] = sim.requests

    assert result.outcome == ACK
    assert request["attributes"][attribute] == ["2M/4M"]
    assert {"Mikrotik-Rate-Limit", "Acme-Rate"} & set(request["attributes"]) == {attribute}


def test_a_rate_attribute_missing_from_the_dictionary_fails_early():
    with pytest.raises(ValueError, match="Cisco-AVPair"):
        Client(rate_attributes={"cisco": "Cisco-AVPair"})


# -- the secret stays secret ---------------------------------------------------------

def test_the_secret_never_appears_in_details_or_logs(nas, sim, caplog):
    caplog.set_level(logging.DEBUG)
    client = Client(timeout=0.1, retries=3, backoff=0.01)
    results = []
    for behaviour in ["ack", "nak", "silent", "bad-authenticator", "bad-message-authenticator"]:
        sim.behaviour = behaviour
        results.append(client.change_rate(nas, SESSION, "1M/2M"))
        results.append(client.disconnect(nas, SESSION))
    results.append(client.disconnect(Nas("127.0.0.1", SECRET, coa_port=free_udp_port()), SESSION))

    assert {result.outcome for result in results} == {ACK, NAK, TIMEOUT}
    for result in results:
        assert SECRET not in result.detail
        assert SECRET not in repr(result)
    assert SECRET not in repr(nas)
    warnings = [record for record in caplog.records if record.name == "enforcer.coa"]
    assert len(warnings) == 3 * 2 * 3 + 3  # one line per failed attempt
    assert SECRET not in caplog.text
    for record in caplog.records:
        assert SECRET not in record.getMessage()
