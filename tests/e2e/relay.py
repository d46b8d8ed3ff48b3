"""QEMU guestfwd command: joins the guest's connection (this process's stdin and stdout) to a
TCP port on host loopback, until either side closes."""

import socket
import sys
import threading


def main() -> None:
    peer = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
    peer.settimeout(None)

    def guest_to_peer() -> None:
        while data := sys.stdin.buffer.read1(65536):
            peer.sendall(data)
        peer.shutdown(socket.SHUT_WR)

    threading.Thread(target=guest_to_peer, daemon=True).start()
    while data := peer.recv(65536):
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
