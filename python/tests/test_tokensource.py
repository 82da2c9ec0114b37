import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import requests

from meshauth import (AppRoleAuth, KubernetesAuth, LoginError, LoginLocked, LoginRefused, MeshauthAuth, StaticToken,
                      TokenSource, VaultPermissionDenied)
from helpers import Clock


class FakeVault(BaseHTTPRequestHandler):
    answers = []
    seen = []

    def log_message(self, *a):
        pass

    def _answer(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        FakeVault.seen.append((self.command, self.path, dict(self.headers), body))
        if self.path.startswith("/v1/auth/kubernetes/login"):
            ok = json.loads(body) == {"role": "orders", "jwt": "sa-token"}
            status, doc = (200, {"auth": {"client_token": "vt-k8s", "lease_duration": 0}}) if ok else (400, {"errors": ["bad"]})
        elif self.path.startswith("/v1/auth/approle/login"):
            status, doc = 200, {"auth": {"client_token": "vt-1", "lease_duration": 60}}
        elif self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", self.headers.get("X-Target"))
            self.end_headers()
            return
        elif self.path.startswith("/echo"):
            status, doc = 200, {"authorization": self.headers.get("Authorization")}
        else:
            status, doc = FakeVault.answers.pop(0)
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer


@pytest.fixture
def vault():
    srv = HTTPServer(("127.0.0.1", 0), FakeVault)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    FakeVault.answers, FakeVault.seen = [], []
    yield "http://127.0.0.1:%d" % srv.server_port
    srv.shutdown()
    srv.server_close()


def ok(tok="t1", life=300):
    return 200, {"data": {"token": tok, "expires_in": life, "token_type": "Bearer"}}


def test_login_post_refresh_and_lockout(vault, caplog):
    clock = Clock()
    ts = TokenSource(vault, "orders", "SECRET-KEY", AppRoleAuth("role", "SECRET-ID"), audience="payments", clock=clock)
    FakeVault.answers = [ok("t1")]
    assert ts.token() == "t1" and ts.token() == "t1"
    method, path, headers, body = FakeVault.seen[-1]
    assert method == "POST" and path == "/v1/meshauth/login/orders" and headers["X-Vault-Token"] == "vt-1"
    assert json.loads(body) == {"api_key": "SECRET-KEY", "audience": ["payments"]}
    clock.t += 301  # expired: a new login
    until = "2999-01-01T00:00:00Z"
    FakeVault.answers = [(403, {"errors": ["login locked for this caller after too many failed attempts; try again after " + until]})]
    with pytest.raises(LoginError) as e:
        ts.token()
    assert e.value.locked_until is not None and e.value.retry_at > clock.t + 3600
    n = len(FakeVault.seen)
    with pytest.raises(LoginError):
        ts.token()  # waits out the lockout: Vault is not asked
    assert len(FakeVault.seen) == n
    for rec in caplog.records:
        assert "SECRET" not in rec.getMessage() and "t1" not in rec.getMessage()


def test_get_login_and_backoff(vault):
    clock = Clock()
    ts = TokenSource(vault, "orders", "K", StaticToken("root"), use_get=True, clock=clock, min_backoff=1, max_backoff=4)
    FakeVault.answers = [(403, {"errors": ["permission denied"]})]
    with pytest.raises(LoginError):
        ts.token()
    with pytest.raises(LoginError):
        ts.token()
    assert len(FakeVault.seen) == 1
    clock.t += 1.1
    FakeVault.answers = [ok("t2")]
    assert ts.token() == "t2"
    method, path, headers, _ = FakeVault.seen[-1]
    assert method == "GET" and headers["X-Meshauth-Api-Key"] == "K" and "K" not in path


def test_auth_drops_token_on_cross_origin_redirect(vault):
    ts = TokenSource(vault, "orders", "K", StaticToken("root"))
    FakeVault.answers = [ok("tok")]
    s = requests.Session()
    same = s.get(vault + "/redirect", auth=MeshauthAuth(ts), headers={"X-Target": vault + "/echo"})
    assert same.json()["authorization"] == "Bearer tok"
    other = vault.replace("127.0.0.1", "localhost")
    cross = s.get(vault + "/redirect", auth=MeshauthAuth(ts), headers={"X-Target": other + "/echo"})
    assert cross.json()["authorization"] is None


def test_kubernetes_auth(vault, tmp_path):
    sa = tmp_path / "token"
    sa.write_text("sa-token\n")
    ts = TokenSource(vault, "orders", "K", KubernetesAuth("orders", token_path=str(sa)))
    FakeVault.answers = [ok("t3")]
    assert ts.token() == "t3"
    assert FakeVault.seen[-1][2]["X-Vault-Token"] == "vt-k8s"


def test_tls_settings_reach_every_request(monkeypatch):
    # A session's verify loses to REQUESTS_CA_BUNDLE (set on many hosts):
    # the CA and client certificate must go with each request.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    seen = []

    class Resp:
        status_code = 200

        def json(self):
            return {"data": {"token": "t", "expires_in": 60}}

    class Session:
        def post(self, url, **kw):
            seen.append(kw)
            return Resp()

    ts = TokenSource("https://vault", "orders", "K", StaticToken("root"), cert=("c.pem", "c.key"),
                     ca_file="vault-ca.pem", session=Session())
    assert ts.token() == "t"
    assert seen[0]["verify"] == "vault-ca.pem" and seen[0]["cert"] == ("c.pem", "c.key")


def test_exchange_cached_per_subject_and_audience(vault):
    clock = Clock()
    ts = TokenSource(vault, "payments", "K", StaticToken("root"), clock=clock)
    FakeVault.answers = [ok("x1", 300), ok("x2", 300), ok("x3", 300)]
    assert ts.exchange("subj", "ledger") == "x1"
    assert ts.exchange("subj", "ledger") == "x1"
    method, path, _, body = FakeVault.seen[-1]
    assert method == "POST" and path == "/v1/meshauth/exchange/payments"
    assert json.loads(body) == {"api_key": "K", "subject_token": "subj", "audience": "ledger",
                                "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                                "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"}
    assert ts.exchange("other", "ledger") == "x2"
    clock.t += 201  # past two thirds of the lifetime
    assert ts.exchange("subj", "ledger") == "x3"
    FakeVault.answers = [(403, {"errors": ["meshauth: exchange refused: audience \"x\" is not in the exchange_audiences"]})]
    with pytest.raises(LoginError) as e:
        ts.exchange("subj", "x")
    assert "exchange_audiences" in str(e.value)


# Answer bodies as Vault 1.21 sends them (docs/http-api.md): the engine's
# errors wrapped in Vault's "1 error occurred" list.
REFUSED = {"errors": ["1 error occurred:\n\t* meshauth: login refused for service \"orders\": the API key, the client "
                      "certificate or the service's state did not pass, and the answer does not say which. Vault's "
                      "server log has the reason at level info (message \"login refused\", fields service, caller and "
                      "reason): see it in the server's log output, or live with: vault monitor -log-level=info\n\n"]}
LOCKED = {"errors": ["1 error occurred:\n\t* login locked for this caller after too many failed attempts; try again "
                     "after 2999-01-01T00:00:00Z\n\n"]}
ACL = {"errors": ["1 error occurred:\n\t* permission denied\n\n"]}
INVALID = {"errors": ["2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n"]}


def test_refusals_are_told_apart(vault):
    clock = Clock()
    ts = TokenSource(vault, "orders", "K", AppRoleAuth("role", "SECRET-ID"), clock=clock, min_backoff=1, max_backoff=30)
    cases = [(REFUSED, LoginRefused), (LOCKED, LoginLocked), (ACL, VaultPermissionDenied),
             (INVALID, VaultPermissionDenied)]
    for body, kind in cases:
        clock.t += 24 * 3600 * 365 * 1000  # past any wait
        FakeVault.answers = [(403, body)]
        with pytest.raises(LoginError) as e:
            ts.token()
        assert type(e.value) is kind, (body, e.value)
        assert e.value.status == 403
    # Each is only itself.
    clock.t += 24 * 3600 * 365 * 1000
    FakeVault.answers = [(403, REFUSED)]
    with pytest.raises(LoginRefused) as e:
        ts.token()
    assert e.value.locked_until is None and "vault monitor" in str(e.value)
    assert not isinstance(e.value, (LoginLocked, VaultPermissionDenied))
    clock.t += 24 * 3600 * 365 * 1000
    FakeVault.answers = [(403, LOCKED)]
    with pytest.raises(LoginLocked) as e:
        ts.token()
    assert e.value.locked_until == 32472144000.0
    clock.t += 24 * 3600 * 365 * 1000
    FakeVault.answers = [(403, ACL)]
    with pytest.raises(VaultPermissionDenied) as e:
        ts.token()
    assert "meshauth/login/orders" in str(e.value) and not e.value.invalid_token
    # Only a 403 is a refusal: the same text with another status is a plain LoginError.
    clock.t += 24 * 3600 * 365 * 1000
    FakeVault.answers = [(500, {"errors": ["1 error occurred:\n\t* meshauth: login refused\n\n"]})]
    with pytest.raises(LoginError) as e:
        ts.token()
    assert type(e.value) is LoginError


def test_invalid_vault_token_logs_in_to_vault_again(vault):
    clock = Clock()
    ts = TokenSource(vault, "orders", "K", AppRoleAuth("role", "SECRET-ID"), clock=clock, min_backoff=1)
    FakeVault.answers = [(403, INVALID)]
    with pytest.raises(VaultPermissionDenied) as e:
        ts.token()
    assert e.value.invalid_token
    clock.t += 1.1
    FakeVault.answers = [ok("t9")]
    assert ts.token() == "t9"
    approle = [s for s in FakeVault.seen if s[1] == "/v1/auth/approle/login"]
    assert len(approle) == 2


def test_refused_login_is_not_retried_in_a_tight_loop(vault):
    # Regression: a refusal backed off from min_backoff like any failure, so
    # the refresher asked again within a second, each time counting toward
    # the engine's lockout. Now it waits max_backoff (less jitter).
    ts = TokenSource(vault, "orders", "K", StaticToken("root"), min_backoff=0.01, max_backoff=30)
    FakeVault.answers = [(403, REFUSED)] * 50
    ts.start()
    try:
        time.sleep(0.6)
    finally:
        ts.stop()
    logins = [s for s in FakeVault.seen if s[1].startswith("/v1/meshauth/login/")]
    assert len(logins) == 1
    with pytest.raises(LoginRefused) as e:
        ts.token()  # the last refusal, without asking Vault
    assert e.value.retry_at - time.time() > 20
    assert len([s for s in FakeVault.seen if s[1].startswith("/v1/meshauth/login/")]) == 1
