"""A real SMTP server on loopback for the tests (aiosmtpd): every message received is written
to OUTDIR as NNNNN.eml. Prints "ready" once listening; runs until its stdin closes (the test
process holds the other end, so the sink dies with the test).

usage: python3 smtp_sink.py PORT OUTDIR
"""
import os
import sys

from aiosmtpd.controller import Controller


class Handler:
    def __init__(self, outdir):
        self.outdir = outdir
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        path = os.path.join(self.outdir, "%05d.eml" % self.count)
        with open(path + ".tmp", "wb") as f:
            f.write(envelope.content)
        os.rename(path + ".tmp", path)
        return "250 OK"


def main():
    port, outdir = int(sys.argv[1]), sys.argv[2]
    controller = Controller(Handler(outdir), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    sys.stdin.read()
    controller.stop()


if __name__ == "__main__":
    main()
