"""An SMTP server for the tests (aiosmtpd) that requires STARTTLS and AUTH
(PLAIN or LOGIN) before it takes mail. Each accepted message is written to
DIR. Usage: tls_auth_smtp.py PORT DIR CERT KEY USER PASSWORD"""

import asyncio
import pathlib
import ssl
import sys
import uuid

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Handler:
    def __init__(self, out):
        self.out = out

    async def handle_DATA(self, server, session, envelope):
        (self.out / (uuid.uuid4().hex + ".eml")).write_bytes(envelope.original_content)
        return "250 2.0.0 Ok: queued"


def main():
    port, out, cert, key, user, password = sys.argv[1:7]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        return AuthResult(success=ok, handled=False)

    controller = Controller(
        Handler(pathlib.Path(out)),
        hostname="127.0.0.1",
        port=int(port),
        tls_context=context,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=True,
    )
    controller.start()
    try:
        asyncio.get_event_loop().run_forever()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
