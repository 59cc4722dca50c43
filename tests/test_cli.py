"""``gochat-cli`` driven as a real subprocess against a real node, through pipes."""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from typing import Any

from twisted.internet import defer, error, protocol, reactor

from tests.util import NodeTestCase

WAIT = 30.0  # seconds for one expected line; generous for a loaded machine


class CliProcess(protocol.ProcessProtocol):
    """A running ``gochat-cli``: type lines, wait for output lines matching a pattern."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.raw = b""  # everything written, control sequences included
        self.cursor = 0  # lines before this were consumed by an earlier expect()
        self.stderr = b""
        self.partial = b""
        self.waiting: tuple[re.Pattern, defer.Deferred] | None = None
        self.waiting_raw: tuple[bytes, defer.Deferred] | None = None
        self.ended: defer.Deferred = defer.Deferred()

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self.raw += data
        if self.waiting_raw is not None and self.waiting_raw[0] in self.raw:
            d, self.waiting_raw = self.waiting_raw[1], None
            d.callback(None)
        self.partial += data
        *complete, self.partial = self.partial.split(b"\n")
        self.lines.extend(line.decode("utf-8", "replace").rstrip("\r") for line in complete)
        self._check()

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self.stderr += data

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        self.ended.callback(reason.value.exitCode)
        if self.waiting is not None:
            pattern, d = self.waiting
            self.waiting = None
            d.errback(AssertionError(f"exited before {pattern.pattern!r}: {self.transcript()}"))

    def transcript(self) -> str:
        return "\n".join(self.lines) + "\nstderr: " + self.stderr.decode("utf-8", "replace")

    def type(self, line: str) -> None:
        self.transport.write((line + "\n").encode())

    def expect(self, pattern: str) -> defer.Deferred:
        """Fires with the match of the first new line matching ``pattern``."""
        d: defer.Deferred = defer.Deferred()
        self.waiting = (re.compile(pattern), d)
        timer = reactor.callLater(WAIT, self._timeout, d, pattern)
        d.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        self._check()
        return d

    def expect_raw(self, data: bytes) -> defer.Deferred:
        """Fires once ``data`` has appeared anywhere in the output."""
        d: defer.Deferred = defer.Deferred()
        if data in self.raw:
            d.callback(None)
            return d
        self.waiting_raw = (data, d)
        timer = reactor.callLater(WAIT, self._timeout_raw, d, data)
        d.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        return d

    def _timeout_raw(self, d: defer.Deferred, data: bytes) -> None:
        if self.waiting_raw is not None and self.waiting_raw[1] is d:
            self.waiting_raw = None
            d.errback(AssertionError(f"{data!r} never appeared in:\n{self.raw!r}"))

    def _timeout(self, d: defer.Deferred, pattern: str) -> None:
        if self.waiting is not None and self.waiting[1] is d:
            self.waiting = None
            d.errback(AssertionError(f"no line matching {pattern!r} in:\n{self.transcript()}"))

    def _check(self) -> None:
        if self.waiting is None:
            return
        pattern, d = self.waiting
        for i in range(self.cursor, len(self.lines)):
            match = pattern.search(self.lines[i])
            if match:
                self.cursor = i + 1
                self.waiting = None
                d.callback(match)
                return


class TerminalClient(NodeTestCase):
    timeout = 120
    node_options = {"sync_limit": 2}  # the history at start takes several sync pages

    def cli(self, *args: str, pty: bool = False) -> CliProcess:
        proc = CliProcess()
        argv = [
            sys.executable,
            "-m",
            "gochat.client.cli",
            "--http",
            self.node.http_url,
            "--ws",
            self.node.ws_url,
            "--password",
            "pw-" + args[1],  # by phone number: the same for register and login
            *args,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        reactor.spawnProcess(proc, sys.executable, argv, env=env, usePTY=pty)
        self.addCleanup(self._stop, proc)
        return proc

    @defer.inlineCallbacks
    def _stop(self, proc: CliProcess) -> Any:
        if not proc.ended.called:
            try:
                proc.transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass
            yield proc.ended

    @defer.inlineCallbacks
    def test_two_terminals_chat_one_to_one_and_in_a_group_then_sync_at_start(self):
        alice = self.cli("register", "100", "alice")
        alice_id = int((yield alice.expect(r"Logged in as alice \(user (\d+)\);")).group(1))
        bob = self.cli("register", "200", "bob")
        bob_id = int((yield bob.expect(r"Logged in as bob \(user (\d+)\);")).group(1))

        alice.type(f"/to {bob_id}")
        yield alice.expect(rf"now talking to bob \(user {bob_id}\)")
        alice.type("hello bob")
        yield alice.expect(rf"sent to bob \(user {bob_id}\) \(seq 1\)")
        yield bob.expect(r"\[alice\] hello bob$")

        bob.type(f"/to {alice_id}")
        bob.type("hi alice, nice to meet you")
        yield alice.expect(r"\[bob\] hi alice, nice to meet you$")

        alice.type(f"/create team {bob_id}")
        group = int((yield alice.expect(r"created group (\d+) \(team\)")).group(1))
        alice.type("welcome to the team")
        yield bob.expect(r"\[team\] alice: welcome to the team$")
        bob.type(f"/group {group}")
        bob.type("glad to be here")
        yield alice.expect(r"\[team\] bob: glad to be here$")

        # Alice leaves (end of input); bob writes; alice logs in again and
        # sees the whole history, the message she missed included, in order.
        alice.transport.closeStdin()
        self.assertEqual((yield alice.ended), 0)
        bob.type(f"/to {alice_id}")
        bob.type("are you there?")
        yield bob.expect(rf"sent to alice \(user {alice_id}\) \(seq \d+\)")
        again = self.cli("login", "100")
        yield again.expect(r"Logged in as alice")
        history = [line.split(" ", 1)[1] for line in again.lines[:-1]]
        history = [line for line in history if " * " not in line]  # group events
        self.assertEqual(
            history,
            [
                "[you -> bob] hello bob",
                "[bob] hi alice, nice to meet you",
                "[team] you: welcome to the team",
                "[team] bob: glad to be here",
                "[bob] are you there?",
            ],
        )
        again.type("/quit")
        self.assertEqual((yield again.ended), 0)

    @defer.inlineCallbacks
    def test_find_by_phone_and_manage_a_group_with_names_and_events(self):
        alice = self.cli("register", "110", "alice")
        alice_id = int((yield alice.expect(r"\(user (\d+)\);")).group(1))
        bob = self.cli("register", "210", "bob")
        bob_id = int((yield bob.expect(r"\(user (\d+)\);")).group(1))
        carol_id, carol_token = yield self.node.user("carol")

        alice.type("/find 999")
        yield alice.expect(r"nobody has the phone number 999")
        alice.type("/find 210")
        yield alice.expect(rf"found bob \(user {bob_id}\); now talking to them")
        alice.type("hi, found you")
        yield bob.expect(r"\[alice\] hi, found you$")

        alice.type(f"/create team {bob_id}")
        group = int((yield alice.expect(r"created group (\d+) \(team\)")).group(1))
        alice.type(f"/add {carol_id}")
        yield alice.expect(r"\* carol added to team")
        yield bob.expect(r"\[team\] \* alice added carol$")
        alice.type("/members")
        members = (yield alice.expect(r"\* 3 in team: (.*)")).group(1)
        self.assertEqual(
            sorted(members.split(", ")),
            sorted([f"alice [{alice_id}] (owner) (you)", f"bob [{bob_id}]", f"carol [{carol_id}]"]),
        )
        alice.type("/rename crew")
        yield alice.expect(rf"the group {group} is now called crew")
        yield bob.expect(r"\[crew\] \* alice renamed the group to crew$")

        # Only the owner removes; anyone leaves.
        bob.type(f"/group {group}")
        yield bob.expect(rf"now talking in crew \(group {group}\)")
        bob.type(f"/remove {carol_id}")
        yield bob.expect(r"/remove failed: .*\(403\)")
        alice.type(f"/remove {carol_id}")
        yield alice.expect(r"\* carol removed from crew")
        yield bob.expect(r"\[crew\] \* alice removed carol$")
        bob.type("/leave")
        yield bob.expect(r"you left crew")
        yield alice.expect(r"\[crew\] \* bob left$")
        bob.type("anyone?")
        yield bob.expect(r"choose who to talk to first")

        # A read position reaches the one-to-one peer as "seen".
        bob.type(f"/to {alice_id}")
        bob.type("/read")
        yield bob.expect(rf"read alice \(user {alice_id}\) up to seq \d+")
        yield alice.expect(r"\* bob has seen your messages")
        alice.type("/list")
        yield alice.expect(r"conversations:")
        yield alice.expect(rf"crew \[group {group}\]")

    @defer.inlineCallbacks
    def test_piped_input_runs_and_prints_in_the_order_typed(self):
        bob_id, _ = yield self.node.user("bob")
        yield self.node.api().register("220", "pw-220", "alice")
        alice = self.cli("login", "220")
        # All at once, before login: each line waits for the one before it.
        alice.transport.write(
            (
                f"/to {bob_id}\n"
                "first\n"
                f"/create team {bob_id}\n"
                "second, in the group\n"
                "/members\n"
                "/whoami\n"
            ).encode()
        )
        alice.transport.closeStdin()
        self.assertEqual((yield alice.ended), 0)
        lines = [line for line in alice.lines if not re.match(r"\d\d:\d\d ", line)]
        self.assertRegex(lines[0], r"^Logged in as alice \(user \d+\);")
        self.assertEqual(lines[1], f"* now talking to bob (user {bob_id})")
        self.assertEqual(lines[2], f"* sent to bob (user {bob_id}) (seq 1)")
        group = int(re.match(r"\* created group (\d+) \(team\)", lines[3]).group(1))
        self.assertEqual(lines[4], f"* sent to team (group {group}) (seq 2)")
        self.assertRegex(lines[5], r"^\* 2 in team: ")
        self.assertRegex(
            lines[6], rf"^\* you are alice \(user \d+\), talking to team \(group {group}\)"
        )

    @defer.inlineCallbacks
    def test_help_lists_the_in_chat_commands(self):
        proc = CliProcess()
        argv = [sys.executable, "-m", "gochat.client.cli", "--help"]
        reactor.spawnProcess(proc, sys.executable, argv, env=dict(os.environ))
        self.assertEqual((yield proc.ended), 0)
        out = "\n".join(proc.lines)
        for command in (
            "/to ID",
            "/find PHONE",
            "/members",
            "/add IDS",
            "/remove IDS",
            "/leave",
            "/rename NAME",
            "/read",
            "/quit",
            "Ctrl-U",
        ):
            self.assertIn(command, out)

    @defer.inlineCallbacks
    def test_refused_messages_and_bad_commands_are_explained(self):
        alice = self.cli("register", "300", "alice")
        yield alice.expect(r"Logged in as")
        alice.type("nobody to talk to")
        yield alice.expect(r"choose who to talk to first")
        alice.type("/to 999999")
        alice.type("anyone?")
        yield alice.expect(r"not sent to user 999999: no such user or group \(1005\)")
        alice.type("/group 12345")
        alice.type("hello group")
        yield alice.expect(r"not sent to group 12345: no such user or group \(1005\)")
        alice.type("/frobnicate")
        yield alice.expect(r"not understood")

    @defer.inlineCallbacks
    def test_reconnects_after_the_connection_drops_and_keeps_chatting(self):
        alice = self.cli("register", "500", "alice")
        yield alice.expect(r"Logged in as")
        bob_id, bob_token = yield self.node.user("bob")
        bob = yield self.client(bob_token)
        got = defer.Deferred()
        bob.on_message = got.callback
        for session in list(self.node.service.hub.sessions):
            if session.user_id != bob_id:
                session.close("test drops the connection")
        yield alice.expect(r"connection lost; reconnecting in")
        yield alice.expect(r"\* reconnected")
        alice.type(f"/to {bob_id}")
        alice.type("back again")
        yield alice.expect(rf"sent to bob \(user {bob_id}\) \(seq 1\)")
        msg = yield got
        self.assertEqual(msg.content, b"back again")

    @defer.inlineCallbacks
    def test_on_a_terminal_a_message_arriving_mid_line_leaves_the_line_intact(self):
        alice = self.cli("register", "600", "alice", pty=True)
        alice_id = int((yield alice.expect(r"\(user (\d+)\);")).group(1))
        bob_id, bob_token = yield self.node.user("bob")
        bob = yield self.client(bob_token)
        got = defer.Deferred()
        bob.on_message = got.callback
        alice.transport.write(f"/to {bob_id}\r".encode())
        yield alice.expect(rf"now talking to bob \(user {bob_id}\)")
        yield alice.expect_raw(b"bob> ")  # the prompt names who lines go to
        alice.transport.write(b"junk\x15")  # Ctrl-U clears what was typed
        alice.transport.write(b"half-typ")
        yield alice.expect_raw(b"half-typ")  # the line editor echoed it
        yield bob.send_text(alice_id, "ping")
        # The message is printed above the input line, which is drawn again.
        yield alice.expect_raw(b"[bob] ping\r\nbob> half-typ")
        alice.transport.write(b"ed line\r")
        msg = yield got
        self.assertEqual(msg.content, b"half-typed line")
        yield alice.expect(rf"sent to bob \(user {bob_id}\) \(seq 2\)")
        alice.transport.write(b"\x04")  # Ctrl-D on an empty line leaves
        self.assertEqual((yield alice.ended), 0)

    @defer.inlineCallbacks
    def test_wrong_password_exits_with_one_line(self):
        yield self.node.api().register("400", "the-right-one", "dave")
        proc = self.cli("login", "400")
        code = yield proc.ended
        self.assertEqual(code, 1)
        self.assertEqual(proc.lines, [])
        self.assertRegex(proc.stderr.decode(), r"^gochat-cli: login failed: 401: .+\n$")

    def test_console_script_is_declared(self):
        scripts = importlib.metadata.entry_points(group="console_scripts")
        self.assertEqual(scripts["gochat-cli"].value, "gochat.client.cli:main")
