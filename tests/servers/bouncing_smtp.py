"""An SMTP server for the tests (aiosmtpd): accepts mail, except to
addresses whose local part starts with "gone", which it refuses as a
mailbox that does not exist (550 5.1.1), and to the domain slow.example,
which it defers (450 4.7.1), counting those attempts as lines of DIR.slow.
Each accepted message is written to DIR as a file.
Usage: bouncing_smtp.py PORT DIR"""

import asyncio
import pathlib
import sys
import uuid

from aiosmtpd.controller import Controller


class Handler:
    def __init__(self, out):
        self.out = out

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower().endswith("@slow.example"):
            with open(str(self.out) + ".slow", "a") as counter:
                counter.write(address + "\n")
            return "450 4.7.1 <%s>: too many messages, slow down" % address
        if address.split("@")[0].startswith("gone"):
            return "550 5.1.1 <%s>: Recipient address rejected: no such mailbox" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        (self.out / (uuid.uuid4().hex + ".eml")).write_bytes(envelope.original_content)
        return "250 2.0.0 Ok: queued"


def main():
    port, out = int(sys.argv[1]), pathlib.Path(sys.argv[2])
    controller = Controller(Handler(out), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        asyncio.get_event_loop().run_forever()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
