"""Starts the test IdP (django-oauth-toolkit) on 127.0.0.1 and a free port.

    python serve.py <state-dir>

Creates the SQLite database and an RSA key in <state-dir>, migrates, seeds the user and the
clients, then serves (threaded) and prints `listening on <port>` once it accepts connections.

Seeded: user `alice` (password `any-password`); confidential client `www` / `Secr3t!`
(authorization code + PKCE, redirect URI http://127.0.0.1/callback, RS256 ID tokens);
confidential client `rs` / `rs-secret` (client credentials; may introspect).
"""

import os
import shutil
import sys
import time
from pathlib import Path

started = time.monotonic()
state = Path(sys.argv[1])
state.mkdir(parents=True, exist_ok=True)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

key_file = state / "rsa.pem"
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
key_file.write_bytes(
    key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
)
os.environ["IDP_DB"] = str(state / "idp.sqlite3")
os.environ["IDP_RSA_KEY_FILE"] = str(key_file)
os.environ["DJANGO_SETTINGS_MODULE"] = "idp.settings"

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from oauth2_provider.models import get_application_model  # noqa: E402

# Migrating takes seconds; a migrated empty database is kept next to the venv (it depends only
# on the pinned packages) and copied for each start. Built once, atomically (concurrent starts
# may both build it; the last rename wins, and both copies are complete).
template = Path(os.environ.get("IDP_TEMPLATE_DB", Path(__file__).resolve().parent / ".venv" / "template.sqlite3"))
if not template.exists():
    from django.db import connections  # noqa: E402

    build = template.with_name(f"{template.name}.{os.getpid()}.tmp")
    connections["default"].settings_dict["NAME"] = str(build)
    connections["default"].close()
    call_command("migrate", verbosity=0, interactive=False)
    connections["default"].close()
    os.replace(build, template)
    connections["default"].settings_dict["NAME"] = os.environ["IDP_DB"]
shutil.copyfile(template, os.environ["IDP_DB"])
migrated = time.monotonic()

user = get_user_model().objects.create_user("alice", password="any-password")
Application = get_application_model()
Application.objects.create(
    client_id="www",
    client_secret="Secr3t!",
    name="www",
    user=user,
    client_type=Application.CLIENT_CONFIDENTIAL,
    authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
    redirect_uris="http://127.0.0.1/callback",
    algorithm=Application.RS256_ALGORITHM,
)
Application.objects.create(
    client_id="rs",
    client_secret="rs-secret",
    name="rs",
    user=user,
    client_type=Application.CLIENT_CONFIDENTIAL,
    authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
)


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002
        pass


server = ThreadedWSGIServer(("127.0.0.1", 0), QuietHandler)
server.daemon_threads = True
server.set_app(get_wsgi_application())
port = server.server_address[1]
print(
    f"listening on {port} (migrate {migrated - started:.2f}s, "
    f"ready {time.monotonic() - started:.2f}s)",
    flush=True,
)
server.serve_forever()
