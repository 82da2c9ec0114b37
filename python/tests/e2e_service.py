"""A Python service for the end-to-end test (e2e/python_test.go starts it with
/usr/bin/python3 against a real Vault): it logs in as a service with its
client certificate (TokenSource, AppRole for its Vault token) and serves

  /charge   behind meshauth's WSGI middleware (a Verifier from the issuer's
            discovery document, checking the revocation feed found through
            its revocation_endpoint (by default; only its staleness is
            tuned here, to the engine's 10s), believing the
            X-Forwarded-Client-Cert header only from its trusted proxy's
            network): answers the caller's service name;
  /token    the service's token (?fresh=1: a new login);
  /verify   the Verifier's verdict on ?token= presented with ?thumbprint=
            ("" accepted, else the reason), to compare with Go's;
  /unwrap   unwrap_api_key on the POSTed JSON {"token", "service"}: JSON
            {"outcome": "ok" or the exception's class, "api_key", "api_key_id",
            "creation_path"}.

It prints "ready <port>" once it serves. Configuration is JSON on stdin,
so no secret appears on a command line.
"""

import json
import socketserver
import sys
import urllib.parse
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from meshauth import (AppRoleAuth, RevocationConfig, TokenSource, TrustedProxies, UnwrapError, Verifier, VerifyError,
                      WSGIMiddleware, unwrap_api_key)


class ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def main():
    cfg = json.load(sys.stdin)
    source = TokenSource(cfg["vault_addr"], cfg["service"], cfg["api_key"],
                         AppRoleAuth(cfg["role_id"], cfg["secret_id"]), mount=cfg["mount"],
                         cert=(cfg["cert_file"], cfg["key_file"]), ca_file=cfg["vault_ca"], audience=cfg["audience"])
    verifier = Verifier(discovery_url=cfg["issuer"] + "/.well-known/openid-configuration", audience=cfg["audience"],
                        ca_file=cfg["vault_ca"], min_refetch_interval=1, max_staleness=cfg["key_max_staleness"],
                        revocations=RevocationConfig(max_staleness=cfg["feed_max_staleness"]),
                        trusted_proxies=TrustedProxies(networks=cfg["trusted_networks"]))

    def charge(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["meshauth.claims"].service_name.encode()]

    protected = WSGIMiddleware(charge, verifier)

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        qs = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        if path == "/charge":
            return protected(environ, start_response)
        if path == "/token":
            try:
                tok = source.fresh_token() if qs.get("fresh") else source.token()
            except Exception as e:  # the test shows it
                start_response("502 Bad Gateway", [("Content-Type", "text/plain")])
                return [str(e).encode()]
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [tok.encode()]
        if path == "/verify":
            try:
                verifier.verify(qs["token"][0], thumbprint=qs.get("thumbprint", [""])[0])
                reason = ""
            except VerifyError as e:
                reason = e.reason
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [reason.encode()]
        if path == "/unwrap" and environ.get("REQUEST_METHOD") == "POST":
            req = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
            try:
                key = unwrap_api_key(cfg["vault_addr"], req["token"], cfg["mount"], req["service"],
                                     ca_file=cfg["vault_ca"])
                answer = {"outcome": "ok", "api_key": key.key, "api_key_id": key.key_id,
                          "creation_path": key.creation_path}
            except UnwrapError as e:
                answer = {"outcome": type(e).__name__, "message": str(e)}
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(answer).encode()]
        start_response("404 Not Found", [])
        return [b""]

    srv = make_server("127.0.0.1", 0, app, server_class=ThreadingServer, handler_class=QuietHandler)
    print("ready %d" % srv.server_port, flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
