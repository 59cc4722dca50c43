"""``gochat-cli``: chat from a terminal, on top of the client library.

Register or log in over the HTTP API, then a line mode: ``/to ID`` and
``/group ID`` pick who plain lines go to, ``/create NAME IDS…`` makes a group.
Messages are printed as they arrive, while you type; what arrived while you
were away is printed first (the client syncs at login). A dropped connection is
reopened with backoff, and what you typed meanwhile is sent then, once.

On a terminal the input line is edited in place (Twisted Conch's line
editor), so a message that arrives while you type is printed above the line
you are typing and the line is redrawn; through pipes it reads plain lines.
It owns only the terminal: delivery, ACKs and sync are the library's.
"""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys
import termios
import time
import tty
from typing import Any

from twisted.conch.insults.insults import ServerProtocol
from twisted.conch.recvline import HistoricRecvLine
from twisted.internet import defer, stdio, task
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from gochat import codes
from gochat.client.http import ApiError, HttpApi
from gochat.client.ws import GoChatClient, SendError, connect
from gochat.pb import pb

HELP = """\
Commands:
  /to ID               talk to the user with this id
  /group ID            talk in the group with this id
  /create NAME IDS...  create a group with these members (you included) and talk in it
  /whoami              your user id and the current target
  /quit                leave (end of input does too)
Any other line is sent to the current target.
"""

CODE_TEXT = {
    **codes.MESSAGES,
    codes.UNAUTHORIZED: "not allowed (not a member?)",
    codes.NO_DATA: "no such user or group",
}
BACKOFF = (0.5, 1, 2, 4, 8, 15, 30)
HEARTBEAT_INTERVAL = 60.0


class Terminal(LineReceiver):
    """Plain lines through pipes: reads commands, prints messages and outcomes."""

    delimiter = os.linesep.encode()

    def __init__(self, chat: Chat) -> None:
        self.chat = chat
        chat.terminal = self

    def lineReceived(self, line: bytes) -> None:  # noqa: N802 - Twisted's name
        text = line.decode("utf-8", "replace").rstrip("\r")
        if text.strip():
            self.chat.command(text)

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802
        self.chat.quit()

    def show(self, text: str) -> None:
        if self.transport is not None:
            self.transport.write((text + "\n").encode("utf-8", "replace"))


class TtyTerminal(HistoricRecvLine):
    """A terminal in raw mode: an editable input line (arrows, history) kept
    below the output, redrawn after every message that arrives."""

    ps = (b"> ", b"> ")

    def __init__(self, chat: Chat) -> None:
        self.chat = chat
        chat.terminal = self

    def initializeScreen(self) -> None:  # noqa: N802 - Twisted's name
        # Unlike RecvLine, keep what is on the screen (no reset).
        self.terminal.write(self.ps[self.pn])
        self.setInsertMode()

    def keystrokeReceived(self, keyID: Any, modifier: Any) -> None:  # noqa: N802, N803
        if keyID == b"\x03" or (keyID == b"\x04" and not self.lineBuffer):  # Ctrl-C, Ctrl-D
            self.chat.quit()
        elif isinstance(keyID, bytes) and keyID >= b"\x80":
            self.characterReceived(keyID, False)  # bytes of a UTF-8 character
        else:
            super().keystrokeReceived(keyID, modifier)

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        self.terminal.write(self.ps[self.pn])
        text = line.decode("utf-8", "replace")
        if text.strip():
            self.chat.command(text)

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802
        self.chat.quit()

    def show(self, text: str) -> None:
        if self.terminal is None:
            return
        self.terminal.eraseLine()
        # The terminal turns "\n" into "\r\n" itself.
        self.terminal.write(b"\r" + text.encode("utf-8", "replace") + b"\n")
        self.drawInputLine()
        behind = len(self.lineBuffer) - self.lineBufferIndex
        if behind:
            self.terminal.cursorBackward(behind)


class RawMode:
    """Puts a terminal in raw mode for the line editor and always restores it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved: list | None = None

    def enter(self) -> None:
        self.saved = termios.tcgetattr(self.fd)
        tty.setraw(self.fd)

    def restore(self) -> None:
        if self.saved is not None:
            termios.tcsetattr(self.fd, termios.TCSANOW, self.saved)
            self.saved = None
            sys.stdout.write("\n")
            sys.stdout.flush()


class Chat:
    """One signed-in user at a terminal."""

    def __init__(
        self,
        reactor: Any,
        api: HttpApi,
        ws_url: str,
        token: str,
        user_id: int,
        device_id: str,
    ) -> None:
        self.reactor = reactor
        self.api = api
        self.ws_url = ws_url
        self.token = token
        self.user_id = user_id
        self.target: tuple[str, int] | None = None
        self.terminal: Any = None  # a Terminal or TtyTerminal, which sets itself here
        self.client = GoChatClient(
            token, device_id=device_id, push_ack=True, reactor=reactor, on_message=self.received
        )
        self.done: defer.Deferred = defer.Deferred()
        self.quitting = False
        self.attempt = 0
        self.unsent = 0
        self.heartbeat = task.LoopingCall(self._heartbeat)
        self.heartbeat.clock = reactor

    # -- connection ----------------------------------------------------------

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Connect, log in and print what arrived while away; fails if the first try does."""
        yield connect(self.ws_url, client=self.client, reactor=self.reactor)
        self._connected()
        self.show(
            f"Logged in as user {self.user_id}; up to date at seq {self.client.seq}. "
            "Type /help for commands."
        )
        self.heartbeat.start(HEARTBEAT_INTERVAL, now=False)

    def _connected(self) -> None:
        self.attempt = 0
        self.client.disconnected.addCallback(self._lost)

    def _lost(self, close: Any) -> None:
        if self.quitting:
            self._finish()
            return
        delay = BACKOFF[min(self.attempt, len(BACKOFF) - 1)]
        self.attempt += 1
        self.show(f"* connection lost; reconnecting in {delay:g} s")
        self.reactor.callLater(delay, self._reconnect)

    def _reconnect(self) -> None:
        if self.quitting:
            return

        def ok(_: Any) -> None:
            self._connected()
            self.show("* reconnected")

        def failed(failure: Failure) -> None:
            if failure.check(SendError) and failure.value.code == codes.UNAUTHORIZED:
                self.show("* the node refused the token; log in again")
                self.quit()
            elif not self.quitting:
                self._lost(None)

        connect(self.ws_url, client=self.client, reactor=self.reactor).addCallbacks(ok, failed)

    def _heartbeat(self) -> None:
        if self.client.logged_in:
            self.client.heartbeat()

    def quit(self) -> None:
        if self.quitting:
            return
        self.quitting = True
        if self.heartbeat.running:
            self.heartbeat.stop()
        if self.unsent:
            self.show(f"* {self.unsent} message(s) not yet acknowledged are dropped")
        if self.client.proto is not None:
            self.client.close()  # _lost finishes once the close completes
        else:
            self._finish()

    def _finish(self) -> None:
        if not self.done.called:
            self.done.callback(None)

    # -- terminal ------------------------------------------------------------

    def show(self, text: str) -> None:
        if self.terminal is not None:
            self.terminal.show(text)

    def command(self, line: str) -> None:
        if not line.startswith("/"):
            self.say(line)
            return
        name, _, rest = line.partition(" ")
        args = rest.split()
        if name == "/to" and len(args) == 1 and args[0].isdigit():
            self.target = ("user", int(args[0]))
            self.show(f"* now talking to user {args[0]}")
        elif name == "/group" and len(args) == 1 and args[0].isdigit():
            self.target = ("group", int(args[0]))
            self.show(f"* now talking in group {args[0]}")
        elif name == "/create" and args and all(a.isdigit() for a in args[1:]):
            self.create_group(args[0], [int(a) for a in args[1:]])
        elif name == "/whoami":
            where = f"{self.target[0]} {self.target[1]}" if self.target else "nobody yet"
            self.show(f"* you are user {self.user_id}, talking to {where}")
        elif name == "/help":
            self.show(HELP.rstrip())
        elif name == "/quit":
            self.quit()
        else:
            self.show(f"* not understood: {line!r}; /help lists the commands")

    def say(self, text: str) -> None:
        if self.target is None:
            self.show("* choose who to talk to first: /to ID or /group ID")
            return
        kind, to = self.target
        self.unsent += 1
        d = self.client.send_text(to, text, group=kind == "group")
        d.addBoth(self._settled)
        d.addCallbacks(
            lambda seq: self.show(f"* sent to {kind} {to} (seq {seq})"),
            lambda f: self._not_sent(f, kind, to),
        )

    def _settled(self, result: Any) -> Any:
        self.unsent -= 1
        return result

    def _not_sent(self, failure: Failure, kind: str, to: int) -> None:
        if failure.check(SendError):
            code = failure.value.code
            reason = CODE_TEXT.get(code, "refused")
            self.show(f"* not sent to {kind} {to}: {reason} ({code})")
        else:
            self.show(f"* not sent to {kind} {to}: {failure.getErrorMessage()}")

    def create_group(self, name: str, ids: list[int]) -> None:
        def created(data: dict) -> None:
            group_id = int(data["id"])
            self.target = ("group", group_id)
            self.show(f"* created group {group_id} ({name}); now talking in it")

        def failed(failure: Failure) -> None:
            self.show(f"* could not create the group: {failure.getErrorMessage()}")

        self.api.create_group(self.token, name, ids).addCallbacks(created, failed)

    def received(self, msg: pb.Message) -> None:
        when = time.strftime("%H:%M", time.localtime(msg.send_time / 1000)) if msg.send_time else ""
        text = msg.content.decode("utf-8", "replace")
        mine = msg.sender_id == self.user_id
        if msg.session_type == pb.ST_Group:
            who = "you" if mine else f"user {msg.sender_id}"
            self.show(f"{when} [group {msg.receiver_id}] {who}: {text}")
        elif mine:
            self.show(f"{when} [you -> user {msg.receiver_id}] {text}")
        else:
            self.show(f"{when} [user {msg.sender_id}] {text}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gochat-cli", description="Chat on a GoChat node from a terminal."
    )
    parser.add_argument(
        "--http",
        default=os.environ.get("GOCHAT_CLI_HTTP", "http://127.0.0.1:9090"),
        help="the node's HTTP API (default %(default)s)",
    )
    parser.add_argument(
        "--ws",
        default=os.environ.get("GOCHAT_CLI_WS", "ws://127.0.0.1:9091/ws"),
        help="the node's WebSocket URL (default %(default)s)",
    )
    parser.add_argument("--password", help="the password (default: GOCHAT_PASSWORD, else a prompt)")
    parser.add_argument(
        "--device-id", help="this terminal's device id (default: a new one per run)"
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="read plain lines even on a terminal (no in-place line editing)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    register = commands.add_parser("register", help="create an account, then chat")
    register.add_argument("phone")
    register.add_argument("nickname")
    login = commands.add_parser("login", help="log in, then chat")
    login.add_argument("phone")
    return parser.parse_args(argv)


@defer.inlineCallbacks
def run(reactor: Any, args: argparse.Namespace, password: str, raw: RawMode | None = None) -> Any:
    api = HttpApi(args.http, reactor)
    try:
        if args.command == "register":
            data = yield api.register(args.phone, password, args.nickname)
            user_id = int(data["id"])
        else:
            data = yield api.login(args.phone, password)
            user_id = int(data["user_id"])
    except ApiError as exc:
        sys.stderr.write(f"gochat-cli: {args.command} failed: {exc}\n")
        raise SystemExit(1) from None
    except Exception as exc:
        sys.stderr.write(f"gochat-cli: cannot reach {args.http}: {exc}\n")
        raise SystemExit(1) from None
    device_id = args.device_id or "cli-" + secrets.token_hex(6)
    chat = Chat(reactor, api, args.ws, data["token"], user_id, device_id)
    if raw is not None:
        raw.enter()
        stdio.StandardIO(ServerProtocol(TtyTerminal, chat), reactor=reactor)
    else:
        stdio.StandardIO(Terminal(chat), reactor=reactor)
    try:
        yield chat.start()
    except Exception as exc:
        if raw is not None:
            raw.restore()
        sys.stderr.write(f"gochat-cli: cannot log in at {args.ws}: {exc}\n")
        raise SystemExit(1) from None
    yield chat.done


def main(argv: list[str] | None = None) -> None:
    """The ``gochat-cli`` console script."""
    args = parse_args(argv)
    password = args.password or os.environ.get("GOCHAT_PASSWORD")
    if not password:
        password = getpass.getpass("Password: ")
    raw = None
    if not args.plain and sys.stdin.isatty() and sys.stdout.isatty():
        raw = RawMode(sys.stdin.fileno())
    try:
        task.react(run, (args, password, raw))
    finally:
        if raw is not None:
            raw.restore()


if __name__ == "__main__":
    main()
