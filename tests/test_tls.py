"""TLS: wss:// and https:// through endpoint descriptions, verified clients, PB mutual TLS."""

from __future__ import annotations

import tempfile
from typing import Any

from OpenSSL.SSL import Error as SSLError
from twisted.internet import defer, endpoints, reactor
from twisted.spread import pb as spread
from twisted.trial import unittest
from twisted.web.client import ResponseNeverReceived

from gochat.client import HttpApi, connect
from gochat.client.http import ApiError
from gochat.tls import ClusterTLSError, load_cluster_tls
from tests.certs import CertificateAuthority
from tests.util import Node


def ssl_endpoint(issued: Any) -> str:
    return f"ssl:0:interface=127.0.0.1:privateKey={issued.key_path}:certKey={issued.cert_path}"


class TLSNodeTest(unittest.TestCase):
    """A node whose --ws and --http are ``ssl:`` endpoints with a certificate made here."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.dir = tempfile.mkdtemp(prefix="gochat-tls-")
        self.ca = CertificateAuthority(self.dir)
        leaf = self.ca.issue("127.0.0.1")
        self.node = Node(ws=ssl_endpoint(leaf), http=ssl_endpoint(leaf))
        yield self.node.start()
        self.addCleanup(self.node.stop)
        self.trust = self.ca.twisted_cert()

    @defer.inlineCallbacks
    def test_https_register_and_wss_chat_with_the_ca_trusted(self):
        self.assertTrue(self.node.http_url.startswith("https://"))
        self.assertTrue(self.node.ws_url.startswith("wss://"))
        alice, alice_token = yield self.node.user("alice", trust_root=self.trust)
        bob, bob_token = yield self.node.user("bob", trust_root=self.trust)
        a = yield connect(self.node.ws_url, alice_token, trust_root=self.trust)
        b = yield connect(self.node.ws_url, bob_token, trust_root=self.trust)
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        got = defer.Deferred()
        b.on_message = got.callback

        seq = yield a.send_text(bob, "over TLS")

        self.assertEqual(seq, 1)
        msg = yield got
        self.assertEqual((msg.sender_id, msg.content), (alice, b"over TLS"))

    @defer.inlineCallbacks
    def test_https_client_without_the_ca_refuses_the_certificate(self):
        api = HttpApi(self.node.http_url)  # system trust store only
        with self.assertRaises(ResponseNeverReceived) as caught:
            yield api.register("5550001", "secret", "eve")
        self.assertTrue(any(r.check(SSLError) for r in caught.exception.reasons))

    @defer.inlineCallbacks
    def test_plain_http_to_the_https_port_gets_no_api_answer(self):
        plain = HttpApi(self.node.http_url.replace("https://", "http://"))
        with self.assertRaises((ResponseNeverReceived, ApiError)) as caught:
            yield plain.register("5550002", "secret", "eve")
        if isinstance(caught.exception, ApiError):
            # Some TLS stacks answer a plaintext request with a 400 page: never JSON data.
            self.assertNotEqual(caught.exception.status, 200)

    @defer.inlineCallbacks
    def test_wss_client_without_the_ca_refuses_the_certificate(self):
        _, token = yield self.node.user("carol", trust_root=self.trust)
        with self.assertRaises(Exception) as caught:
            yield connect(self.node.ws_url, token)
        self.assertNotIsInstance(caught.exception, AssertionError)
        self.assertEqual(self._logged_in_sessions(), 0)

    @defer.inlineCallbacks
    def test_plain_ws_client_to_the_wss_port_fails(self):
        _, token = yield self.node.user("dave", trust_root=self.trust)
        with self.assertRaises(Exception) as caught:
            yield connect(self.node.ws_url.replace("wss://", "ws://"), token)
        self.assertNotIsInstance(caught.exception, AssertionError)
        self.assertEqual(self._logged_in_sessions(), 0)

    @defer.inlineCallbacks
    def test_wss_client_checks_the_host_name(self):
        other = self.ca.issue("chat.example.org")  # signed by the trusted CA, wrong name
        node = Node(ws=ssl_endpoint(other))
        yield node.start()
        self.addCleanup(node.stop)
        _, token = yield self.node.user("erin", trust_root=self.trust)
        with self.assertRaises(Exception) as caught:
            yield connect(node.ws_url, token, trust_root=self.trust)
        self.assertNotIsInstance(caught.exception, AssertionError)

    def _logged_in_sessions(self) -> int:
        return sum(1 for s in self.node.service.hub.sessions if s.logged_in)


class _Echo(spread.Root):
    def remote_echo(self, value: Any) -> Any:
        return value


@defer.inlineCallbacks
def echo_over(endpoint: Any) -> Any:
    """Call ``echo`` over PB; fails when the connection drops (a refused TLS handshake).

    An endpoint-connected PBClientFactory never hears of a lost connection, so the
    broker's disconnect notification cancels the call instead.
    """
    client = spread.PBClientFactory()
    broker = yield endpoint.connect(client)

    @defer.inlineCallbacks
    def call() -> Any:
        root = yield client.getRootObject()
        return (yield root.callRemote("echo", "ping"))

    result = call()
    gone: defer.Deferred = defer.Deferred()

    def disconnected() -> None:
        if not result.called:
            result.cancel()
        gone.callback(None)

    if broker.disconnected:
        disconnected()
    else:
        broker.notifyOnDisconnect(disconnected)
    try:
        answer = yield result
    finally:
        client.disconnect()
        yield gone
    return answer


class ClusterTLSTest(unittest.TestCase):
    """PB over mutual TLS: only peers with a certificate from the cluster CA get through."""

    timeout = 30

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="gochat-cluster-tls-")
        self.cluster_ca = CertificateAuthority(self.dir, "cluster CA")
        node_a = self.cluster_ca.issue("node-a")
        self.server_tls = load_cluster_tls(
            self.cluster_ca.files.cert_path, node_a.cert_path, node_a.key_path
        )
        factory = self.server_tls.wrap_server_factory(spread.PBServerFactory(_Echo()))
        server = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        d = server.listen(factory)
        d.addCallback(self._listening)
        return d

    def _listening(self, port: Any) -> None:
        self.port = port
        self.addCleanup(port.stopListening)

    def _call(self, tls: Any) -> defer.Deferred:
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        return echo_over(tls.wrap_client_endpoint(endpoint))

    @defer.inlineCallbacks
    def test_peer_signed_by_the_cluster_ca_is_served(self):
        node_b = self.cluster_ca.issue("node-b")
        tls = load_cluster_tls(self.cluster_ca.files.cert_path, node_b.cert_path, node_b.key_path)
        answer = yield self._call(tls)
        self.assertEqual(answer, "ping")

    @defer.inlineCallbacks
    def test_peer_signed_by_another_ca_is_refused(self):
        rogue_ca = CertificateAuthority(self.dir, "rogue CA")
        rogue = rogue_ca.issue("node-x")
        # The rogue trusts the real cluster CA, so only the server's check can stop it.
        tls = load_cluster_tls(self.cluster_ca.files.cert_path, rogue.cert_path, rogue.key_path)
        with self.assertRaises(Exception) as caught:
            yield self._call(tls)
        self.assertNotIsInstance(caught.exception, AssertionError)

    @defer.inlineCallbacks
    def test_server_with_a_foreign_certificate_is_refused_by_the_client(self):
        # A node of the cluster will not talk to an impostor server either.
        rogue_ca = CertificateAuthority(self.dir, "impostor CA")
        node_b = self.cluster_ca.issue("node-b")
        tls = load_cluster_tls(rogue_ca.files.cert_path, node_b.cert_path, node_b.key_path)
        with self.assertRaises(Exception) as caught:
            yield self._call(tls)
        self.assertNotIsInstance(caught.exception, AssertionError)

    @defer.inlineCallbacks
    def test_peer_without_a_certificate_is_refused(self):
        from twisted.internet import ssl

        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        options = ssl.CertificateOptions(
            trustRoot=ssl.trustRootFromCertificates([self.cluster_ca.twisted_cert()])
        )
        with self.assertRaises(Exception) as caught:
            yield echo_over(endpoints.wrapClientTLS(options, endpoint))
        self.assertNotIsInstance(caught.exception, AssertionError)

    def test_key_that_does_not_match_the_certificate_is_a_clear_error(self):
        a = self.cluster_ca.issue("node-a")
        b = self.cluster_ca.issue("node-b")
        with self.assertRaises(ClusterTLSError):
            load_cluster_tls(self.cluster_ca.files.cert_path, a.cert_path, b.key_path)

    def test_missing_file_is_a_clear_error(self):
        with self.assertRaises(ClusterTLSError) as caught:
            load_cluster_tls(self.dir + "/nope.pem", self.dir + "/nope.crt")
        self.assertIn("--cluster-ca", str(caught.exception))
