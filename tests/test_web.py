"""The web chat page: served beside the API, and used in a real browser.

The browser tests drive Debian's ``chromium`` with Playwright from a worker
thread (Playwright's sync API blocks), while the node under test keeps running
on the reactor in this process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.web.client import Agent, readBody

from gochat import codec
from gochat.pb import pb
from gochat.store.store import UpItem
from gochat.web import protobufjs_schema
from tests.util import NodeTestCase, missing_service

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def artifacts_dir() -> str:
    """Where screenshots go: ``GOCHAT_TEST_ARTIFACTS`` or trial's working directory."""
    path = os.path.abspath(os.environ.get("GOCHAT_TEST_ARTIFACTS") or "web-artifacts")
    os.makedirs(path, exist_ok=True)
    return path


class ServedPage(NodeTestCase):
    """The page and its files share ``--http`` with the JSON API."""

    @defer.inlineCallbacks
    def get(self, path: str) -> Any:
        response = yield Agent(reactor).request(b"GET", (self.node.http_url + path).encode())
        body = yield readBody(response)
        return response, body

    @defer.inlineCallbacks
    def test_root_serves_the_chat_page_with_security_headers(self):
        response, body = yield self.get("/")
        self.assertEqual(response.code, 200)
        self.assertIn(b"text/html", response.headers.getRawHeaders(b"content-type")[0])
        self.assertIn(b'<script src="/static/app.js" defer></script>', body)
        csp = response.headers.getRawHeaders(b"content-security-policy")[0]
        self.assertIn(b"script-src 'self'", csp)
        self.assertEqual(response.headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])

    @defer.inlineCallbacks
    def test_static_files_and_the_bundled_protobufjs_are_served(self):
        for path, ctype in (
            ("/static/app.js", b"javascript"),
            ("/static/app.css", b"text/css"),
            ("/static/vendor/protobuf.light.min.js", b"javascript"),
        ):
            response, body = yield self.get(path)
            self.assertEqual(response.code, 200, path)
            self.assertIn(ctype, response.headers.getRawHeaders(b"content-type")[0], path)
            self.assertTrue(body, path)
        response, body = yield self.get("/static/vendor/protobufjs-LICENSE.txt")
        self.assertIn(b"Daniel Wirtz", body)

    @defer.inlineCallbacks
    def test_schema_lists_every_message_and_field_of_the_wire_contract(self):
        response, body = yield self.get("/static/gochat-proto.json")
        self.assertEqual(response.code, 200)
        schema = json.loads(body)
        self.assertEqual(schema, protobufjs_schema())
        types = schema["nested"]["pb"]["nested"]
        self.assertEqual(types["Message"]["fields"]["receiver_id"], {"type": "uint64", "id": 2})
        self.assertEqual(
            types["SyncOutputMsg"]["fields"]["messages"],
            {"type": "pb.Message", "id": 1, "rule": "repeated"},
        )
        self.assertEqual(types["CmdType"]["values"]["CT_Sync"], 5)
        wire = pb.DESCRIPTOR
        self.assertEqual(set(types), set(wire.message_types_by_name) | set(wire.enum_types_by_name))

    @defer.inlineCallbacks
    def test_unknown_paths_stay_json_404_and_directories_are_not_listed(self):
        for path in ("/nope", "/static/nope.js", "/static/", "/static/vendor/", "/friend/nope"):
            response, body = yield self.get(path)
            self.assertEqual(response.code, 404, path)
            self.assertEqual(json.loads(body)["code"], 404, path)

    @defer.inlineCallbacks
    def test_api_still_answers_beside_the_page(self):
        data = yield self.node.api().register("555", "pw", "carol")
        self.assertTrue(data["token"])
        response, body = yield self.get("/group_user/list")
        self.assertEqual(response.code, 401)


class BrowserCase(NodeTestCase):
    """A node and Debian's Chromium, driven by Playwright."""

    timeout = 240
    node_options = {"sync_limit": 2}  # catching up takes several sync pages

    def setUp(self) -> Any:
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            missing_service("chromium is not installed (apt-get install chromium)")
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing_service("the playwright Python package is not installed")
        self.chromium = chromium
        return super().setUp()

    def drop_connections(self) -> None:
        """Close every WebSocket on the node, as a network blip would."""
        for session in list(self.node.service.hub.sessions):
            session.close("test drops the connection")

    def push_again(self, user_id: int, msg: pb.Message) -> None:
        """Send a push the device already had, as a server retransmit would."""
        for session in list(self.node.service.hub.sessions):
            if session.user_id == user_id:
                session.send(codec.push_frame(msg))

    def store_without_push(self, sender: int, receiver: int, text: str) -> defer.Deferred:
        """Store a message but push it to nobody, as if every push of it were lost."""
        message = pb.Message(
            session_type=pb.ST_Single,
            sender_id=sender,
            receiver_id=receiver,
            message_type=pb.MT_Text,
            content=text.encode(),
            send_time=int(time.time() * 1000),
        )
        item = UpItem(sender, "test-direct", 1, message)
        return self.node.service.store.commit_messages([item])


class BrowserChat(BrowserCase):
    """Two people chat through the page in headless Chromium."""

    @defer.inlineCallbacks
    def test_two_people_chat_one_to_one_and_in_a_group_and_catch_up_after_offline(self):
        report = yield threads.deferToThread(self.scenario, self.node.http_url)
        # The page acknowledged pushes, cumulatively, and logged in asking to.
        login = [f for f in report["bob_frames"] if f.type == pb.CT_Login]
        self.assertTrue(login)
        login_msg = pb.LoginMsg.FromString(login[0].data)
        self.assertTrue(login_msg.push_ack)
        self.assertTrue(login_msg.device_id.startswith("web-"))
        acks = [pb.ACKMsg.FromString(f.data) for f in report["bob_frames"] if f.type == pb.CT_ACK]
        self.assertTrue(acks)
        self.assertTrue(all(a.type == pb.AT_Push for a in acks))
        seqs = [a.seq for a in acks]
        self.assertEqual(seqs, sorted(seqs))  # cumulative: never backwards
        self.assertGreaterEqual(seqs[-1], report["bob_seq_of_hello"])
        # Upstream clientIds of one device run 1, 2, 3, ... across reconnects.
        client_ids = report["alice_client_ids"]
        self.assertEqual(client_ids, list(range(1, len(client_ids) + 1)))
        for path in report["screenshots"]:
            self.assertGreater(os.path.getsize(path), 10000, path)

    def scenario(self, base: str) -> dict[str, Any]:
        from playwright.sync_api import expect, sync_playwright

        expect.set_options(timeout=20000)
        report: dict[str, Any] = {"bob_frames": [], "screenshots": []}

        def record(into: list[pb.Input]) -> Any:
            def on_socket(ws: Any) -> None:
                ws.on("framesent", lambda payload: into.append(pb.Input.FromString(payload)))

            return on_socket

        def register(page: Any, phone: str, nickname: str) -> int:
            page.goto(base + "/")
            page.fill("#phone", phone)
            page.fill("#password", "correct horse")
            page.fill("#nickname", nickname)
            page.click("#register")
            expect(page.locator("#status")).to_have_attribute("data-online", "yes")
            return int(page.locator("#me").get_attribute("data-user-id"))

        def say(page: Any, text: str) -> None:
            page.fill("#text", text)
            page.press("#text", "Enter")
            # Sent means ACKed: the "sending…" mark goes once the node stored it.
            expect(page.locator("#messages li.mine", has_text=text)).to_have_count(1)
            expect(page.locator("#messages li.pending")).to_have_count(0)

        def sees(page: Any, conversation: str, text: str) -> None:
            page.click(f'[data-conversation="{conversation}"]')
            expect(page.locator("#messages li.theirs", has_text=text)).to_have_count(1)

        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=self.chromium, args=CHROMIUM_ARGS, headless=True
            )
            try:
                alice_ctx = browser.new_context(viewport={"width": 1000, "height": 640})
                bob_ctx = browser.new_context(viewport={"width": 1000, "height": 640})
                a = alice_ctx.new_page()
                b = bob_ctx.new_page()
                alice_frames: list[pb.Input] = []
                a.on("websocket", record(alice_frames))
                b.on("websocket", record(report["bob_frames"]))
                alice = register(a, "100", "alice")
                bob = register(b, "200", "bob")

                # One to one, both ways: alice finds bob by his phone number.
                a.fill("#find-phone", "200")
                a.click("#find")
                expect(a.locator("#conv-title")).to_have_text("bob")
                say(a, "hello bob")
                sees(b, f"u{alice}", "hello bob")
                report["bob_seq_of_hello"] = int(
                    b.locator("#messages li.theirs", has_text="hello bob").get_attribute("data-seq")
                )
                say(b, "hi alice")
                expect(a.locator("#messages li.theirs", has_text="hi alice")).to_have_count(1)

                # A push it already holds is dropped; a push past a gap (the
                # one before it was lost) makes the page sync first, so both
                # show, once each, in order — on both sides.
                hello = pb.Message(
                    session_type=pb.ST_Single,
                    sender_id=alice,
                    receiver_id=bob,
                    message_type=pb.MT_Text,
                    content=b"hello bob",
                    seq=report["bob_seq_of_hello"],
                )
                threads.blockingCallFromThread(reactor, self.push_again, bob, hello)
                threads.blockingCallFromThread(
                    reactor, self.store_without_push, alice, bob, "lost push"
                )
                say(a, "after the gap")
                expect(b.locator("#messages li.theirs .text")).to_have_text(
                    ["hello bob", "lost push", "after the gap"]
                )
                expect(a.locator("#messages li.mine .text")).to_have_text(
                    ["hello bob", "lost push", "after the gap"]
                )

                # A group: alice creates it with bob, both write in it.
                a.fill("#group-name", "team")
                a.fill("#group-members", "200")
                a.click("#create-group")
                expect(a.locator("#conv-title")).to_have_text("team")
                group = a.evaluate("location.hash").removeprefix("#g")
                say(a, "welcome to the team")
                sees(b, f"g{group}", "welcome to the team")
                say(b, "glad to be here")
                sees(a, f"g{group}", "glad to be here")

                # The connection drops: the page reconnects by itself and goes on.
                with a.expect_websocket():
                    threads.blockingCallFromThread(reactor, self.drop_connections)
                expect(a.locator("#status")).to_have_attribute("data-online", "yes")
                expect(b.locator("#status")).to_have_attribute("data-online", "yes")
                a.click(f'[data-conversation="u{bob}"]')
                say(a, "still there?")
                sees(b, f"u{alice}", "still there?")

                # Bob closes his page; alice writes; bob comes back and catches up.
                b.close()
                a.click(f'[data-conversation="u{bob}"]')
                say(a, "while you were away")
                say(a, "and one more")
                a.click(f'[data-conversation="g{group}"]')
                say(a, "group news")
                b = bob_ctx.new_page()
                b.on("websocket", record(report["bob_frames"]))
                b.goto(base + "/")
                expect(b.locator("#status")).to_have_attribute("data-online", "yes")
                expect(b.locator(f'[data-conversation="u{alice}"] .badge')).to_have_text("2")
                expect(b.locator(f'[data-conversation="g{group}"] .badge')).to_have_text("1")
                sees(b, f"u{alice}", "while you were away")
                # Nothing twice: history came from the page's store, the rest by sync.
                expect(b.locator("#messages li", has_text="hello bob")).to_have_count(1)
                expect(b.locator("#messages li")).to_have_count(7)
                expect(b.locator("#messages li.theirs .text").last).to_have_text("and one more")
                sees(b, f"g{group}", "group news")
                expect(b.locator("#messages li")).to_have_count(3)

                a.click(f'[data-conversation="u{bob}"]')
                out = artifacts_dir()
                for name, page in (("alice", a), ("bob", b)):
                    path = os.path.join(out, f"web-chat-{name}.png")
                    page.screenshot(path=path)
                    report["screenshots"].append(path)
                report["alice_client_ids"] = sorted(
                    {
                        pb.UpMsg.FromString(f.data).clientId
                        for f in alice_frames
                        if f.type == pb.CT_Message
                    }
                )
            finally:
                browser.close()
        return report


class BrowserPeople(BrowserCase):
    """Names, the server's conversation list, groups, receipts and typing, at two sizes."""

    @defer.inlineCallbacks
    def test_names_groups_receipts_typing_and_the_list_at_desktop_and_phone_sizes(self):
        carol = yield self.node.api().register("300", "correct horse", "carol")
        report = yield threads.deferToThread(self.people, self.node.http_url, int(carol["id"]))
        for path in report["screenshots"]:
            self.assertGreater(os.path.getsize(path), 10000, path)
        # The page asked for read and typing notices at login, and sent both.
        logins = [pb.LoginMsg.FromString(f.data) for f in report["frames"] if f.type == pb.CT_Login]
        self.assertTrue(logins and all(login.notices for login in logins))
        reads = [pb.ReadMsg.FromString(f.data) for f in report["frames"] if f.type == pb.CT_Read]
        self.assertTrue(reads)
        self.assertTrue(any(f.type == pb.CT_Typing for f in report["frames"]))

    def people(self, base: str, carol: int) -> dict[str, Any]:
        from playwright.sync_api import expect, sync_playwright

        expect.set_options(timeout=20000)
        report: dict[str, Any] = {"frames": [], "screenshots": []}
        out = artifacts_dir()

        def shot(page: Any, name: str) -> None:
            path = os.path.join(out, f"web-people-{name}.png")
            page.screenshot(path=path)
            report["screenshots"].append(path)

        def no_sideways_scrolling(page: Any) -> None:
            width = page.evaluate("document.documentElement.scrollWidth")
            self.assertLessEqual(width, page.viewport_size["width"])

        def sign_in(page: Any, phone: str, nickname: str = "") -> int:
            page.on(
                "websocket",
                lambda ws: ws.on(
                    "framesent", lambda data: report["frames"].append(pb.Input.FromString(data))
                ),
            )
            page.goto(base + "/")
            page.fill("#phone", phone)
            page.fill("#password", "correct horse")
            if nickname:
                page.fill("#nickname", nickname)
                page.click("#register")
            else:
                page.click("#login")
            expect(page.locator("#status")).to_have_attribute("data-online", "yes")
            return int(page.locator("#me").get_attribute("data-user-id"))

        def say(page: Any, text: str) -> None:
            page.fill("#text", text)
            page.press("#text", "Enter")
            expect(page.locator("#messages li.mine", has_text=text)).to_have_count(1)
            expect(page.locator("#messages li.pending")).to_have_count(0)

        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=self.chromium, args=CHROMIUM_ARGS, headless=True
            )
            try:
                desktop = {"width": 1280, "height": 800}
                a = browser.new_context(viewport=desktop).new_page()
                b = browser.new_context(viewport=desktop).new_page()
                alice = sign_in(a, "100", "alice")
                bob = sign_in(b, "200", "bob")
                expect(a.locator("#me")).to_have_text("You are alice")

                # Find by phone number starts a chat, titled by nickname.
                a.fill("#find-phone", "999")
                a.click("#find")
                expect(a.locator("#find-error")).to_contain_text("Nobody has the phone number")
                a.fill("#find-phone", "200")
                a.click("#find")
                expect(a.locator("#conv-title")).to_have_text("bob")
                say(a, "hi bob")

                # Bob's list: the name, the last message and an unread badge.
                item = b.locator(f'[data-conversation="u{alice}"]')
                expect(item.locator(".name")).to_have_text("alice")
                expect(item.locator(".preview")).to_have_text("hi bob")
                expect(item.locator(".badge")).to_have_text("1")
                # A second tab is a second device: reading in one clears the badge in both.
                b2 = b.context.new_page()
                b2.goto(base + "/")
                expect(b2.locator("#status")).to_have_attribute("data-online", "yes")
                other = b2.locator(f'[data-conversation="u{alice}"]')
                expect(other.locator(".badge")).to_have_text("1")
                item.click()
                expect(item.locator(".badge")).to_have_count(0)
                expect(other.locator(".badge")).to_have_count(0)
                b2.close()
                expect(b.locator("#messages li.theirs .who")).to_have_text(["alice"])
                # Bob read it: alice's message says so.
                expect(a.locator("#messages li.mine .seen-mark")).to_have_text("Seen")

                # Typing shows on the other side, and a message ends it.
                b.locator("#text").press_sequentially("on my")
                expect(a.locator("#typing")).to_have_text("bob is typing…")
                shot(a, "desktop-typing")
                b.locator("#text").press_sequentially(" way")
                b.press("#text", "Enter")
                expect(a.locator("#messages li.theirs", has_text="on my way")).to_have_count(1)
                expect(a.locator("#typing")).to_have_text("")

                # A group, its panel, and changes as events in the chat.
                a.fill("#group-name", "team")
                a.fill("#group-members", "200")
                a.click("#create-group")
                expect(a.locator("#conv-title")).to_have_text("team")
                group = int(a.evaluate("location.hash").removeprefix("#g"))
                a.click("#group-toggle")
                members = a.locator("#members li .member-name")
                expect(members).to_have_text(["alice (you)", "bob"])
                a.fill("#add-phone", "300")
                a.click("#add")
                expect(members).to_have_text(["alice (you)", "bob", "carol"])
                conv = b.locator(f'[data-conversation="g{group}"]')
                expect(conv.locator(".name")).to_have_text("team")
                conv.click()
                expect(b.locator("#messages li.event")).to_have_text(["Alice added carol"])
                a.fill("#rename-name", "crew")
                a.click("#rename")
                expect(a.locator("#conv-title")).to_have_text("crew")
                expect(b.locator("#conv-title")).to_have_text("crew")
                expect(b.locator("#messages li.event").last).to_have_text(
                    "Alice renamed the group to “crew”"
                )
                say(b, "hello crew")
                # Bob is a member, not the owner: he may add and leave, not remove or rename.
                b.click("#group-toggle")
                expect(b.locator("#members li")).to_have_count(3)
                expect(b.locator("#members .remove")).to_have_count(0)
                expect(b.locator("#rename-form")).to_be_hidden()
                expect(b.locator("#add-form")).to_be_visible()
                a.click(f'[data-member-id="{carol}"] .remove')
                expect(members).to_have_text(["alice (you)", "bob"])
                expect(b.locator("#messages li.event").last).to_have_text("Alice removed carol")
                shot(a, "desktop-group")
                b.click("#leave")
                expect(b.locator("#left-note")).to_be_visible()
                expect(b.locator("#text")).to_be_disabled()
                expect(a.locator("#messages li.event").last).to_have_text("Bob left")
                expect(members).to_have_text(["alice (you)"])
                no_sideways_scrolling(a)

                # A reload keeps the open conversation. It starts without the
                # receipts this browser kept: "Seen" comes back from the node.
                a.add_init_script(
                    f"""(() => {{
                        const key = "gochat:state:{alice}";
                        const saved = JSON.parse(localStorage.getItem(key) || "null");
                        if (!saved) return;
                        saved.seen = {{}};
                        localStorage.setItem(key, JSON.stringify(saved));
                    }})();"""
                )
                a.reload()
                expect(a.locator("#status")).to_have_attribute("data-online", "yes")
                expect(a.locator("#conv-title")).to_have_text("crew")
                expect(a.locator("#messages li.theirs .text")).to_have_text(["hello crew"])
                a.click(f'[data-conversation="u{bob}"]')
                expect(a.locator("#messages .seen-mark")).to_have_count(1)
                hi = a.locator("#messages li.mine", has_text="hi bob")
                expect(hi.locator(".seen-mark")).to_have_text("Seen")
                shot(a, "desktop-seen-after-reload")

                # A new browser: the list, its names, last messages and badges
                # come from the node.
                a.click(f'[data-conversation="u{bob}"]')
                say(a, "one more thing")
                b.context.close()
                b = browser.new_context(viewport=desktop).new_page()
                sign_in(b, "200")
                expect(b.locator("#me")).to_have_text("You are bob")
                items = b.locator("#conversations button")
                expect(items.locator(".name")).to_have_text(["alice", "crew"])
                expect(items.first.locator(".preview")).to_have_text("one more thing")
                expect(items.first.locator(".badge")).to_have_text("1")
                expect(items.last.locator(".preview")).to_have_text("You left")
                expect(items.last.locator(".badge")).to_have_count(0)
                b.fill("#nick", "x" * 33)
                expect(b.locator("#nick")).to_have_value("x" * 32)  # the field stops there
                b.fill("#nick", "robert")
                b.click("#save-nick")
                expect(b.locator("#me")).to_have_text("You are robert")
                shot(b, "desktop-list")

                # A phone: one column; the list, then the conversation alone,
                # with no sideways scrolling and the message box in view.
                phone = {"width": 390, "height": 844}
                m = browser.new_context(viewport=phone, is_mobile=True, has_touch=True).new_page()
                sign_in(m, "100")
                # Bob's new nickname: the list's names come from the node.
                expect(m.locator(f'[data-conversation="u{bob}"] .name')).to_have_text("robert")
                no_sideways_scrolling(m)
                shot(m, "phone-list")
                m.click(f'[data-conversation="u{bob}"]')
                expect(m.locator("#conv-title")).to_have_text("robert")
                # A new browser knows "Seen" too; bob has not read the last one.
                seen = m.locator("#messages li.mine .seen-mark")
                expect(seen).to_have_count(1)
                expect(m.locator("#messages li.mine", has_text="hi bob")).to_have_class(
                    re.compile(r"\bseen\b")
                )
                expect(m.locator("#messages li.mine .text").last).to_have_text("one more thing")
                expect(m.locator("#back")).to_be_visible()
                expect(m.locator("nav")).to_be_hidden()
                say(m, "unbroken" * 40)  # wraps inside its bubble
                no_sideways_scrolling(m)
                for selector in ("#messages", "#text", "#send"):
                    box = m.locator(selector).bounding_box()
                    self.assertLessEqual(box["y"] + box["height"], phone["height"], selector)
                    self.assertGreaterEqual(box["y"], 0, selector)
                no_sideways_scrolling(m)
                shot(m, "phone-chat")
                m.click("#back")
                expect(m.locator("nav")).to_be_visible()
                m.click(f'[data-conversation="g{group}"]')
                m.click("#group-toggle")
                expect(m.locator("#members li .member-name")).to_have_text(["alice (you)"])
                no_sideways_scrolling(m)
                shot(m, "phone-group")
            finally:
                browser.close()
        return report
