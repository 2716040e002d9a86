"""Locust load test of a refresh-token endpoint: each simulated user keeps one refresh chain.

docs/load-testing.md is the recipe. In short:

    refresh-proxy issue --config config.toml --client load --subject load-1 --scope read \
        --count 1000 --out tokens.txt
    TOKENS=tokens.txt CLIENT_ID=load CLIENT_SECRET=... \
        locust -f bench/locustfile.py --host http://127.0.0.1:8080 \
        --headless --users 100 --spawn-rate 50 --run-time 1m

Every user takes the next unused token from TOKENS (one a line, as `refresh-proxy issue --out`
writes them) and refreshes it in a loop: each 200 answer's `refresh_token` replaces the one it
used (RFC 6749 §6), exactly as a rotating client must. A 400 (`invalid_grant`: the chain was
reused, revoked or expired) ends that user; a 5xx or 429 keeps the same token for the next try.
Users beyond the number of tokens stop at once. Tokens are never logged: Locust's statistics
name the request "refresh" and the failures by status and OAuth error code only.
"""

import os
import threading

from locust import HttpUser, constant, task
from locust.exception import StopUser

TOKENS = os.environ.get("TOKENS", "tokens.txt")
CLIENT_ID = os.environ.get("CLIENT_ID", "load")
CLIENT_SECRET = os.environ.get("CLIENT_SECRET", "")
TOKEN_PATH = os.environ.get("TOKEN_PATH", "/token")
SCOPE = os.environ.get("SCOPE")  # unset: the chain's current scope

_lock = threading.Lock()
_tokens: list[str] | None = None


def _take_token() -> str | None:
    """The next unused token of the file (read once, shared by every user of this process)."""
    global _tokens
    with _lock:
        if _tokens is None:
            with open(TOKENS, encoding="utf-8") as f:
                _tokens = [line.strip() for line in f if line.strip()]
            _tokens.reverse()  # pop() then hands them out in file order
        return _tokens.pop() if _tokens else None


def _error_code(response) -> str:
    try:
        code = response.json().get("error")
    except ValueError:
        code = None
    return f"{response.status_code} {code}" if isinstance(code, str) else str(response.status_code)


class RefreshChain(HttpUser):
    # Closed loop: each user refreshes again as soon as it has its answer. Use e.g.
    # constant_pacing(1) for one refresh per user and second.
    wait_time = constant(0)

    def on_start(self) -> None:
        self.token = _take_token()
        if self.token is None:
            raise StopUser()

    @task
    def refresh(self) -> None:
        form = {"grant_type": "refresh_token", "refresh_token": self.token}
        if SCOPE is not None:
            form["scope"] = SCOPE
        auth = (CLIENT_ID, CLIENT_SECRET) if CLIENT_SECRET else None
        if auth is None:
            form["client_id"] = CLIENT_ID
        with self.client.post(TOKEN_PATH, data=form, auth=auth, name="refresh",
                              catch_response=True) as response:
            if response.status_code == 200:
                next_token = response.json().get("refresh_token")
                if next_token:
                    self.token = next_token
                response.success()
                return
            response.failure(_error_code(response))
        if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
            raise StopUser()  # the chain is dead (invalid_grant): this user is done
