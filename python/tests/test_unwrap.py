import json

import pytest
import requests

from meshauth import APIKey, UnwrapError, WrappingTokenUsed, WrongCreationPath, unwrap_api_key

VAULT = "https://vault:8200"
WT = "hvs.CAESIWRAPPINGTOKEN"
KEY = "mk_SECRET-API-KEY"
NOT_VALID = {"errors": ["wrapping token is not valid or does not exist"]}


class Resp:
    def __init__(self, status, doc):
        self.status_code = status
        self.content = json.dumps(doc).encode() if doc is not None else b"<html>"

    def json(self):
        return json.loads(self.content)


class FakeVault:
    """Answers sys/wrapping/lookup and sys/wrapping/unwrap, recording each request."""

    def __init__(self, lookup, unwrap=None):
        self.lookup, self.unwrap = lookup, unwrap
        self.calls = []

    def post(self, url, **kw):
        self.calls.append(("POST", url, kw))
        return Resp(*self.lookup)

    def put(self, url, **kw):
        self.calls.append(("PUT", url, kw))
        if self.unwrap is None:
            raise AssertionError("unwrapped")
        return Resp(*self.unwrap)


def wrapped(path="meshauth/services/orders", name="orders", key=KEY):
    return FakeVault((200, {"data": {"creation_path": path, "creation_time": "2026-12-05T04:00:00Z", "creation_ttl": 120}}),
                     (200, {"data": {"name": name, "api_key": key, "api_key_id": "k-1"}}))


@pytest.mark.parametrize("path", ["meshauth/services/orders", "meshauth/services/orders/rotate-key"])
def test_unwraps_this_services_key(path):
    v = wrapped(path)
    got = unwrap_api_key(VAULT, " " + WT + "\n", "/meshauth/", "orders", ca_file="vault-ca.pem", session=v)
    assert isinstance(got, APIKey)
    assert (got.service, got.key, got.key_id, got.creation_path) == ("orders", KEY, "k-1", path)
    assert KEY not in repr(got)
    (m1, u1, kw1), (m2, u2, kw2) = v.calls
    # The lookup: the token in the body, no client token.
    assert m1 == "POST" and u1 == VAULT + "/v1/sys/wrapping/lookup" and kw1["json"] == {"token": WT}
    assert "X-Vault-Token" not in (kw1.get("headers") or {})
    # The unwrap: the wrapping token as the client token, no body.
    assert m2 == "PUT" and u2 == VAULT + "/v1/sys/wrapping/unwrap" and kw2["headers"] == {"X-Vault-Token": WT}
    assert "json" not in kw2 and "data" not in kw2
    for kw in (kw1, kw2):
        assert kw["verify"] == "vault-ca.pem" and kw["allow_redirects"] is False


@pytest.mark.parametrize("path", [
    "sys/wrapping/wrap",                          # anyone can wrap data of their choosing
    "meshauth/services/orders2",
    "meshauth/services/orders/rotate-key/x",
    "meshauth/services/payments",
    "other/services/orders",
    "meshauth/services/orders/",
    "/meshauth/services/orders",
    "meshauth/services/Orders",
    "",
    None,
    7,
])
def test_wrong_creation_path_is_left_unwrapped(path):
    v = wrapped(path)
    v.unwrap = None  # an unwrap would fail the test
    with pytest.raises(WrongCreationPath) as e:
        unwrap_api_key(VAULT, WT, "meshauth", "orders", session=v)
    assert [c[0] for c in v.calls] == ["POST"]
    assert WT not in str(e.value)


def test_other_mount():
    got = unwrap_api_key(VAULT, WT, "team/mesh", "orders", session=wrapped("team/mesh/services/orders/rotate-key"))
    assert got.key == KEY
    with pytest.raises(WrongCreationPath):
        unwrap_api_key(VAULT, WT, "team/mesh", "orders", session=wrapped("meshauth/services/orders"))


def used(e, service="orders"):
    msg = str(e.value)
    assert "grace_period=0" in msg and "audit log" in msg and "meshauth/services/%s/rotate-key" % service in msg
    assert WT not in msg and KEY not in msg


def test_already_used_at_lookup():
    v = FakeVault((400, NOT_VALID), None)
    with pytest.raises(WrappingTokenUsed) as e:
        unwrap_api_key(VAULT, WT, "meshauth", "orders", session=v)
    used(e)
    assert e.value.status == 400 and len(v.calls) == 1


@pytest.mark.parametrize("status,doc", [(400, NOT_VALID), (403, {"errors": ["permission denied"]})])
def test_used_between_lookup_and_unwrap(status, doc):
    v = wrapped()
    v.unwrap = (status, doc)
    with pytest.raises(WrappingTokenUsed) as e:
        unwrap_api_key(VAULT, WT, "meshauth", "orders", session=v)
    used(e)
    assert e.value.status == status


def test_lookup_403_and_500_are_not_used():
    # Only a 400 at lookup means "not valid" (the brief's rule); a 403 is an
    # ACL on sys/wrapping/lookup, a 500 Vault's trouble: neither says the key
    # was intercepted.
    for status in (403, 500, 503):
        v = FakeVault((status, {"errors": ["no: " + WT]}), None)
        with pytest.raises(UnwrapError) as e:
            unwrap_api_key(VAULT, WT, "meshauth", "orders", session=v)
        assert type(e.value) is UnwrapError and e.value.status == status
        assert WT not in str(e.value) and "<wrapping token>" in str(e.value)


@pytest.mark.parametrize("data", [
    {"name": "payments", "api_key": KEY},
    {"name": "orders", "api_key": ""},
    {"name": "orders"},
    {"name": "orders", "api_key": 7},
    {"api_key": KEY},
    {"secret": "something else someone wrapped"},
])
def test_answer_must_be_this_services_key(data):
    v = wrapped()
    v.unwrap = (200, {"data": data})
    with pytest.raises(UnwrapError) as e:
        unwrap_api_key(VAULT, WT, "meshauth", "orders", session=v)
    assert type(e.value) is UnwrapError and KEY not in str(e.value)


@pytest.mark.parametrize("answer", [(200, {"data": None}), (200, None), (200, [1]), (500, None)])
def test_unusable_answers(answer):
    v = FakeVault(answer, None)
    with pytest.raises(UnwrapError):
        unwrap_api_key(VAULT, WT, "meshauth", "orders", session=v)


def test_transport_failure_names_no_token():
    class Down:
        def post(self, url, **kw):
            raise requests.ConnectionError("cannot reach %s with %s" % (url, kw["json"]["token"]))

    with pytest.raises(UnwrapError) as e:
        unwrap_api_key(VAULT, WT, "meshauth", "orders", session=Down())
    assert WT not in str(e.value) and "ConnectionError" in str(e.value)


def test_arguments_required():
    for args in [("", WT, "meshauth", "orders"), (VAULT, " ", "meshauth", "orders"), (VAULT, WT, "/", "orders"),
                 (VAULT, WT, "meshauth", "")]:
        with pytest.raises(ValueError):
            unwrap_api_key(*args, session=FakeVault((200, {}), None))
