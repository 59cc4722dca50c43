"""``gochat-cli``: chat from a terminal, on top of the client library.

Register or log in over the HTTP API, then a line mode: ``/to ID``,
``/find PHONE`` and ``/group ID`` pick who plain lines go to, ``/create``,
``/members``, ``/add``, ``/remove``, ``/leave`` and ``/rename`` manage groups,
``/read`` marks a conversation read (``HELP`` lists them all). People and
groups are shown by name, asked of the node once each. Messages are printed
as they arrive, while you type; what arrived while you were away is printed
first (the client syncs at login). A dropped connection is reopened with
backoff, and what you typed meanwhile is sent then, once.

On a terminal the input line is edited in place (Twisted Conch's line
editor), so a message that arrives while you type is printed above the line
you are typing and the line is redrawn; the prompt names the target. Through
pipes it reads plain lines and runs each once the one before it is done, so
the output follows the input's order. It owns only the terminal: delivery,
ACKs and sync are the library's.
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
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from twisted.conch.insults.insults import ServerProtocol
from twisted.conch.recvline import HistoricRecvLine
from twisted.internet import defer, stdio, task
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from gochat import codes
from gochat.client.http import ApiError, HttpApi, JsonObject
from gochat.client.ws import GoChatClient, SendError, connect, system_event
from gochat.pb import pb

HELP = """\
Commands:
  /to ID               talk to the user with this id
  /find PHONE          find a user by phone number and talk to them
  /group ID            talk in the group with this id
  /create NAME IDS...  create a group with these members (you included) and talk in it
  /members             the members of the current group (the owner marked)
  /add IDS...          add users to the current group (any member may)
  /remove IDS...       remove users from the current group (the owner only)
  /leave               leave the current group
  /rename NAME         rename the current group (the owner only)
  /read                mark the current conversation read (your other devices and,
                       one to one, the other person see it)
  /list                your conversations, most recent first, with unread counts
  /nick NAME           change your nickname
  /whoami              who you are and who you are talking to
  /quit                leave (end of input does too)
Any other line is sent to the current target. Ctrl-U clears the line.
"""

CODE_TEXT = {
    **codes.MESSAGES,
    codes.UNAUTHORIZED: "not allowed (not a member?)",
    codes.NO_DATA: "no such user or group",
}
BACKOFF = (0.5, 1, 2, 4, 8, 15, 30)
HEARTBEAT_INTERVAL = 60.0

_T = TypeVar("_T")
#: Fires once names are known: at once with None, or with the lookups' results.
_Known = defer.Deferred[None] | defer.Deferred[list[None]]


@implementer(IHalfCloseableProtocol)
class Terminal(LineReceiver):
    """Plain lines through pipes: reads commands, prints messages and outcomes.

    Each line waits for the one before it to finish (a message for its ACK),
    so what a script types happens, and is printed, in the order it was typed.
    Half-closeable: the end of input leaves stdout open for what is still to
    be printed.
    """

    delimiter = os.linesep.encode()
    wait_for_acks = True

    def __init__(self, chat: Chat) -> None:
        self.chat = chat
        chat.terminal = self

    def lineReceived(self, line: bytes) -> None:  # noqa: N802 - Twisted's name
        text = line.decode("utf-8", "replace").rstrip("\r")
        if text.strip():
            self.chat.command(text)

    def readConnectionLost(self) -> None:  # noqa: N802 - Twisted's name
        self.chat.end_of_input()

    def writeConnectionLost(self) -> None:  # noqa: N802
        self.chat.quit()

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802
        self.chat.quit()

    def show(self, text: str) -> None:
        if self.transport is not None:
            self.transport.write((text + "\n").encode("utf-8", "replace"))

    def prompt(self, text: str) -> None:
        """No prompt through pipes: it would be mixed into the output."""


class TtyTerminal(HistoricRecvLine):
    """A terminal in raw mode: an editable input line (arrows, history) kept
    below the output, redrawn after every message that arrives. The prompt
    names who plain lines go to."""

    ps = (b"> ", b"> ")
    wait_for_acks = False

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
        elif keyID == b"\x15":  # Ctrl-U: clear the line
            self.lineBuffer = []
            self.lineBufferIndex = 0
            self._redraw()
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

    def _redraw(self) -> None:
        self.terminal.eraseLine()
        self.terminal.write(b"\r")
        self.drawInputLine()
        behind = len(self.lineBuffer) - self.lineBufferIndex
        if behind:
            self.terminal.cursorBackward(behind)

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

    def prompt(self, text: str) -> None:
        """Name the current target in the prompt, and draw the line again with it."""
        prompt = (text + "> ").encode("utf-8", "replace")
        self.ps = (prompt, prompt)
        if self.terminal is not None:
            self._redraw()


class RawMode:
    """Puts a terminal in raw mode for the line editor and always restores it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved: list[Any] | None = None

    def enter(self) -> None:
        self.saved = termios.tcgetattr(self.fd)
        tty.setraw(self.fd)

    def restore(self) -> None:
        if self.saved is not None:
            termios.tcsetattr(self.fd, termios.TCSANOW, self.saved)
            self.saved = None
            sys.stdout.write("\n")
            sys.stdout.flush()


def _fork(shared: defer.Deferred[_T]) -> defer.Deferred[_T]:
    """A new Deferred with ``shared``'s result, leaving ``shared``'s own untouched."""
    out: defer.Deferred[_T] = defer.Deferred()

    def fire(result: _T) -> _T:
        out.callback(result)
        return result

    shared.addCallback(fire)
    return out


class Names:
    """Nicknames and group names by id, asked of the node once each.

    Lookups never fail: a user or group the node will not describe (unknown,
    or a group this user has left) is named by its id.
    """

    def __init__(self, api: HttpApi, token: str) -> None:
        self.api = api
        self.token = token
        self.users: dict[int, str] = {}
        self.groups: dict[int, str] = {}
        self.owners: dict[int, int] = {}
        self._pending: dict[tuple[str, int], defer.Deferred[None]] = {}

    def user(self, user_id: int) -> str:
        return self.users.get(user_id) or f"user {user_id}"

    def group(self, group_id: int) -> str:
        return self.groups.get(group_id) or f"group {group_id}"

    def learn_users(self, users: list[JsonObject]) -> None:
        for user in users:
            self.users[int(user["id"])] = str(user.get("nickname") or "")

    def known(self, user_ids: Iterable[int] = (), group_id: int | None = None) -> _Known:
        """Fires once the given users and group have names (or never will)."""
        waits = [self._user(u) for u in set(user_ids) if u not in self.users]
        if group_id is not None and group_id not in self.groups:
            waits.append(self._group(group_id))
        if not waits:
            return defer.succeed(None)
        return defer.gatherResults(waits)

    def _user(self, user_id: int) -> defer.Deferred[None]:
        return self._once(("u", user_id), lambda: self.api.user_info(self.token, [user_id]))

    def _group(self, group_id: int) -> defer.Deferred[None]:
        return self._once(("g", group_id), lambda: self.api.group_info(self.token, group_id))

    def _once(
        self, key: tuple[str, int], ask: Callable[[], defer.Deferred[JsonObject]]
    ) -> defer.Deferred[None]:
        """One request per name at a time; every waiter gets its own Deferred."""
        if key not in self._pending:
            d = (
                ask()
                .addCallback(self.learn_group if key[0] == "g" else self._learn_info)
                .addErrback(lambda _: None)  # unnamed: shown by its id
            )

            def done(_: Any) -> None:
                self._pending.pop(key, None)

            self._pending[key] = d
            d.addCallback(done)
            if d.called:
                return defer.succeed(None)
        return _fork(self._pending[key])

    def _learn_info(self, data: JsonObject) -> None:
        self.learn_users(data.get("users", []))

    def learn_group(self, data: JsonObject) -> None:
        group_id = int(data["id"])
        self.groups[group_id] = str(data.get("name") or "")
        if data.get("owner_id") is not None:
            self.owners[group_id] = int(data["owner_id"])
        self.learn_users(data.get("members", []))


def _ids(values: Any) -> list[int]:
    out = []
    for value in values or []:
        try:
            out.append(int(value))
        except (TypeError, ValueError):
            pass
    return out


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
        self.names = Names(api, token)
        self.latest: dict[tuple[str, int], int] = {}  # conversation -> newest seq held
        self.client = GoChatClient(
            token,
            device_id=device_id,
            push_ack=True,
            reactor=reactor,
            on_message=self.received,
            notices=True,
            on_read=self.read_received,
        )
        self.done: defer.Deferred[None] = defer.Deferred()
        self.quitting = False
        self.attempt = 0
        self.unsent = 0
        self.heartbeat = task.LoopingCall(self._heartbeat)
        self.heartbeat.clock = reactor
        # Output goes out in the order things happened, whatever names it waits for.
        self._printing: defer.Deferred[None] = defer.succeed(None)
        # Commands run one after the other, from login on.
        self._ready: defer.Deferred[None] = defer.Deferred()
        # Holds the last command's result, which nothing reads: any type.
        self._commands: defer.Deferred[Any] = self._ready

    # -- connection ----------------------------------------------------------

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Connect, log in and print what arrived while away; fails if the first try does."""
        me = self.names.known([self.user_id])
        yield connect(self.ws_url, client=self.client, reactor=self.reactor)
        self._connected()
        yield me
        self.show(
            f"Logged in as {self.names.user(self.user_id)} (user {self.user_id}); "
            f"up to date at seq {self.client.seq}. Type /help for commands."
        )
        self.heartbeat.start(HEARTBEAT_INTERVAL, now=False)
        self._printing.addCallback(lambda _: self._ready.callback(None))

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
            error = failure.value
            if isinstance(error, SendError) and error.code == codes.UNAUTHORIZED:
                self.show("* the node refused the token; log in again")
                self.quit()
            elif not self.quitting:
                self._lost(None)

        connect(self.ws_url, client=self.client, reactor=self.reactor).addCallbacks(ok, failed)

    def _heartbeat(self) -> None:
        if self.client.logged_in:
            self.client.heartbeat()

    def end_of_input(self) -> None:
        """The pipe closed: leave once what was typed before has run."""
        self._commands.addBoth(lambda _: self.quit())

    def quit(self) -> None:
        if self.quitting:
            return
        self.quitting = True
        if self.heartbeat.running:
            self.heartbeat.stop()
        if self.unsent:
            self.show(f"* {self.unsent} message(s) not yet acknowledged are dropped")
        self._printing.addCallback(lambda _: self._close())

    def _close(self) -> None:
        if self.client.proto is not None:
            self.client.close()  # _lost finishes once the close completes
        else:
            self._finish()

    def _finish(self) -> None:
        if not self.done.called:
            self.done.callback(None)

    # -- terminal ------------------------------------------------------------

    def show(self, text: Any) -> None:
        """Print a line (or what a Deferred fires with) after everything before it."""

        def write(_: Any) -> Any:
            d = text if isinstance(text, defer.Deferred) else defer.succeed(text)
            return d.addCallback(self._write)

        self._printing.addCallback(write)

    def _write(self, text: str | None) -> None:
        if text is not None and self.terminal is not None:
            self.terminal.show(text)

    def _set_target(self, kind: str, to: int) -> defer.Deferred[str]:
        self.target = (kind, to)
        d = self.names.known([to] if kind == "user" else [], to if kind == "group" else None)
        return d.addCallback(lambda _: self._prompt())

    def _target_name(self) -> str:
        if self.target is None:
            return "nobody yet"
        kind, to = self.target
        name = (self.names.groups if kind == "group" else self.names.users).get(to)
        return f"{name} ({kind} {to})" if name else f"{kind} {to}"

    def _prompt(self) -> str:
        if self.target is not None and self.terminal is not None:
            kind, to = self.target
            name = self.names.group(to) if kind == "group" else self.names.user(to)
            self.terminal.prompt(name)
        return self._target_name()

    def command(self, line: str) -> None:
        """Queue a typed line: it runs when the lines before it have."""

        def run(_: Any) -> Any:
            return self._run(line)

        def failed(failure: Failure) -> None:
            self.show(f"* {line.split(' ', 1)[0]} failed: {self._why(failure)}")

        self._commands.addCallback(run)
        self._commands.addErrback(failed)

    def _why(self, failure: Failure) -> str:
        error = failure.value
        if isinstance(error, ApiError):
            return f"{error.msg or 'refused'} ({error.status})"
        if isinstance(error, SendError):
            code = error.code
            return f"{CODE_TEXT.get(code, 'refused')} ({code})"
        return failure.getErrorMessage()

    def _group_target(self) -> int | None:
        if self.target is None or self.target[0] != "group":
            self.show("* not in a group: /group ID first")
            return None
        return self.target[1]

    def _run(self, line: str) -> Any:
        if not line.startswith("/"):
            return self.say(line)
        name, _, rest = line.partition(" ")
        args = rest.split()
        numeric = all(a.isdigit() for a in args)
        group = self.target[1] if self.target and self.target[0] == "group" else None
        if name == "/to" and len(args) == 1 and numeric:
            return self._set_target("user", int(args[0])).addCallback(
                lambda _: self.show(f"* now talking to {self._target_name()}")
            )
        if name == "/group" and len(args) == 1 and numeric:
            return self._set_target("group", int(args[0])).addCallback(
                lambda _: self.show(f"* now talking in {self._target_name()}")
            )
        if name == "/find" and len(args) == 1:
            return self.find(args[0])
        if name == "/create" and args and all(a.isdigit() for a in args[1:]):
            return self.create_group(args[0], [int(a) for a in args[1:]])
        if name in ("/members", "/add", "/remove", "/leave", "/rename"):
            if group is None:
                self.show("* not in a group: /group ID first")
                return None
            if name == "/members" and not args:
                return self.members(group)
            if name in ("/add", "/remove") and args and numeric:
                return self.change_members(name[1:], group, [int(a) for a in args])
            if name == "/leave" and not args:
                return self.leave(group)
            if name == "/rename" and rest.strip():
                return self.rename(group, rest.strip())
        if name == "/read" and not args:
            return self.read()
        if name == "/list" and not args:
            return self.list_conversations()
        if name == "/nick" and rest.strip():
            return self.nick(rest.strip())
        if name == "/whoami" and not args:
            me = f"{self.names.user(self.user_id)} (user {self.user_id})"
            self.show(f"* you are {me}, talking to {self._target_name()}")
        elif name == "/help":
            self.show(HELP.rstrip())
        elif name == "/quit":
            self.quit()
        else:
            self.show(f"* not understood: {line!r}; /help lists the commands")
        return None

    def say(self, text: str) -> Any:
        if self.target is None:
            self.show("* choose who to talk to first: /to ID, /find PHONE or /group ID")
            return None
        kind, to = self.target
        where = self._target_name()
        self.unsent += 1
        d = self.client.send_text(to, text, group=kind == "group")
        d.addBoth(self._settled)
        d.addCallbacks(
            lambda seq: self._sent(kind, to, seq, where),
            lambda f: self.show(f"* not sent to {where}: {self._why(f)}"),
        )
        if getattr(self.terminal, "wait_for_acks", True):
            return d
        return None

    def _sent(self, kind: str, to: int, seq: int, where: str) -> None:
        key = (kind, to)
        self.latest[key] = max(self.latest.get(key, 0), seq)
        self.show(f"* sent to {where} (seq {seq})")

    def _settled(self, result: Any) -> Any:
        self.unsent -= 1
        return result

    @defer.inlineCallbacks
    def find(self, phone: str) -> Any:
        try:
            data = yield self.api.search_user(self.token, phone)
        except ApiError as exc:
            if exc.status == 404:
                self.show(f"* nobody has the phone number {phone}")
                return
            raise
        self.names.learn_users([data])
        yield self._set_target("user", int(data["id"]))
        self.show(f"* found {self._target_name()}; now talking to them")

    @defer.inlineCallbacks
    def create_group(self, name: str, ids: list[int]) -> Any:
        data = yield self.api.create_group(self.token, name, ids)
        group_id = int(data["id"])
        self.names.groups[group_id] = name
        self.names.owners[group_id] = self.user_id
        yield self._set_target("group", group_id)
        self.show(f"* created group {group_id} ({name}); now talking in it")

    @defer.inlineCallbacks
    def members(self, group_id: int) -> Any:
        data = yield self.api.group_info(self.token, group_id)
        self.names.learn_group(data)
        owner = int(data.get("owner_id") or 0)
        people = []
        for member in data.get("members", []):
            uid = int(member["id"])
            mark = " (owner)" if uid == owner else ""
            you = " (you)" if uid == self.user_id else ""
            people.append(f"{member.get('nickname') or 'user ' + str(uid)} [{uid}]{mark}{you}")
        self.show(f"* {len(people)} in {self.names.group(group_id)}: " + ", ".join(people))

    @defer.inlineCallbacks
    def change_members(self, what: str, group_id: int, ids: list[int]) -> Any:
        if what == "add":
            yield self.api.add_members(self.token, group_id, ids)
        else:
            yield self.api.remove_members(self.token, group_id, ids)
        yield self.names.known(ids)
        who = ", ".join(self.names.user(i) for i in ids)
        done = "added to" if what == "add" else "removed from"
        self.show(f"* {who} {done} {self.names.group(group_id)}")

    @defer.inlineCallbacks
    def leave(self, group_id: int) -> Any:
        yield self.api.leave_group(self.token, group_id)
        self.target = None
        if self.terminal is not None:
            self.terminal.prompt("")
        self.show(f"* you left {self.names.group(group_id)}")

    @defer.inlineCallbacks
    def rename(self, group_id: int, name: str) -> Any:
        yield self.api.rename_group(self.token, group_id, name)
        self.names.groups[group_id] = name
        self._prompt()
        self.show(f"* the group {group_id} is now called {name}")

    @defer.inlineCallbacks
    def read(self) -> Any:
        if self.target is None:
            self.show("* no conversation to mark read")
            return
        kind, to = self.target
        seq = self.latest.get(self.target, 0)
        if not seq:
            self.show(f"* nothing to mark read with {self._target_name()}")
            return
        session_type = pb.ST_Group if kind == "group" else pb.ST_Single
        if self.client.logged_in:
            yield self.client.send_read(session_type, to, seq)
        else:
            yield self.api.mark_read(self.token, session_type, to, seq)
        self.show(f"* read {self._target_name()} up to seq {seq}")

    @defer.inlineCallbacks
    def list_conversations(self) -> Any:
        data = yield self.api.conversations(self.token)
        items = data.get("conversations", [])
        if not items:
            self.show("* no conversations yet")
            return
        lines = []
        for item in items:
            peer = int(item["peer_id"])
            group = int(item["session_type"]) == pb.ST_Group
            kind = "group" if group else "user"
            name = item.get("name") or f"{kind} {peer}"
            unread = int(item.get("unread") or 0)
            badge = f" ({unread} unread)" if unread else ""
            lines.append(f"  {name} [{kind} {peer}]{badge}")
        self.show("* conversations:\n" + "\n".join(lines))

    @defer.inlineCallbacks
    def nick(self, nickname: str) -> Any:
        yield self.api.update_user(self.token, nickname)
        self.names.users[self.user_id] = nickname
        self.show(f"* you are now called {nickname}")

    # -- what arrives --------------------------------------------------------

    def received(self, msg: pb.Message) -> None:
        group = msg.session_type == pb.ST_Group
        mine = msg.sender_id == self.user_id
        if group:
            key = ("group", msg.receiver_id)
        else:
            key = ("user", msg.receiver_id if mine else msg.sender_id)
        self.latest[key] = max(self.latest.get(key, 0), msg.seq)
        event = system_event(msg)
        users = [msg.sender_id, msg.receiver_id] if not group else [msg.sender_id]
        if event is not None:
            users += _ids(event.get("user_ids")) + _ids([event.get("actor_id")])
            self._apply_event(msg.receiver_id, event)
        d = self.names.known(users, msg.receiver_id if group else None)
        d.addCallback(lambda _: self._describe(msg, event))
        self.show(d)

    def _apply_event(self, group_id: int, event: dict[str, Any]) -> None:
        if event.get("event") == "group_renamed" and event.get("name"):
            self.names.groups[group_id] = str(event["name"])
            if self.target == ("group", group_id):
                self._prompt()
        if event.get("owner_id") is not None:
            self.names.owners[group_id] = (
                _ids([event["owner_id"]])[0]
                if _ids([event["owner_id"]])
                else self.names.owners.get(group_id, 0)
            )

    def _who(self, user_id: int) -> str:
        return "you" if user_id == self.user_id else self.names.user(user_id)

    def _describe(self, msg: pb.Message, event: dict[str, Any] | None) -> str:
        when = time.strftime("%H:%M", time.localtime(msg.send_time / 1000)) if msg.send_time else ""
        mine = msg.sender_id == self.user_id
        if event is not None:
            return f"{when} [{self.names.group(msg.receiver_id)}] * {self._event_text(event)}"
        text = msg.content.decode("utf-8", "replace")
        if msg.session_type == pb.ST_Group:
            return (
                f"{when} [{self.names.group(msg.receiver_id)}] {self._who(msg.sender_id)}: {text}"
            )
        if mine:
            return f"{when} [you -> {self.names.user(msg.receiver_id)}] {text}"
        return f"{when} [{self.names.user(msg.sender_id)}] {text}"

    def _event_text(self, event: dict[str, Any]) -> str:
        actor = _ids([event.get("actor_id")])
        who = self._who(actor[0]) if actor else "someone"
        users = ", ".join(self._who(u) for u in _ids(event.get("user_ids"))) or "nobody"
        kind = event.get("event")
        if kind == "members_added":
            return f"{who} added {users}"
        if kind == "members_removed":
            return f"{who} removed {users}"
        if kind == "member_left":
            return f"{who} left"
        if kind == "group_renamed":
            return f"{who} renamed the group to {event.get('name', '')}"
        return f"group event: {kind or 'unknown'}"

    def read_received(self, read: pb.ReadMsg) -> None:
        """A read position: the peer's "seen", or this user's other device."""
        if read.reader_id == self.user_id or read.session_type != pb.ST_Single:
            return  # the badge of another device: nothing to print here
        d = self.names.known([read.reader_id])
        d.addCallback(lambda _: f"* {self.names.user(read.reader_id)} has seen your messages")
        self.show(d)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gochat-cli",
        description="Chat on a GoChat node from a terminal.",
        epilog="In the chat:\n" + HELP.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
