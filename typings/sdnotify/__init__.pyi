# The part of sdnotify (0.3.1-0.3.2, untyped) that nflogd/notify.py uses.
import socket

class SystemdNotifier:
    debug: bool
    socket: socket.socket
    def __init__(self, debug: bool = ...) -> None: ...
    def notify(self, state: str) -> None: ...
