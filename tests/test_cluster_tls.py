"""PB between cluster nodes over mutual TLS (--cluster-ca): members talk, others are refused.

Needs PostgreSQL and Redis like every cluster test (tests/services.py).
"""

from __future__ import annotations

import tempfile
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from gochat import codec
from gochat.pb import pb
from gochat.rpc import PeerPool
from gochat.tls import load_cluster_tls
from tests import services
from tests.certs import CertificateAuthority
from tests.util import Node


def push(receiver: int, text: str) -> bytes:
    msg = pb.Message(
        session_type=pb.ST_Single, sender_id=1, receiver_id=receiver, content=text.encode(), seq=1
    )
    return codec.push_frame(msg)


class ClusterOverTLS(unittest.TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.dir = tempfile.mkdtemp(prefix="gochat-cluster-tls-")
        self.ca = CertificateAuthority(self.dir, "cluster CA")
        config = services.cluster_config(self)
        self.nodes = []
        for name in ("node-a", "node-b"):
            issued = self.ca.issue(name)
            node = Node(
                **config,
                cluster_ca=self.ca.files.cert_path,
                cluster_cert=issued.cert_path,
                cluster_key=issued.key_path,
            )
            yield node.start()
            self.addCleanup(node.stop)
            self.nodes.append(node)

    def pool(self, node: Node, issued: Any | None, ca_path: str | None = None) -> PeerPool:
        address = f"127.0.0.1:{node.service.ports['rpc'].getHost().port}"
        wrap = None
        if issued is not None:
            tls = load_cluster_tls(
                ca_path or self.ca.files.cert_path, issued.cert_path, issued.key_path
            )
            wrap = tls.wrap_client_endpoint
        pool = PeerPool(
            "tester", services.CLUSTER_SECRET, lambda _: defer.succeed(address), wrap_endpoint=wrap
        )
        self.addCleanup(self._close_pool, pool)
        return pool

    def _close_pool(self, pool: PeerPool) -> defer.Deferred:
        """Close and wait: a TLS connection takes a round trip to shut down."""
        gone = []
        for peer in pool.peers.values():
            if peer.ref is not None:
                d: defer.Deferred = defer.Deferred()
                peer.ref.notifyOnDisconnect(lambda _, d=d: d.called or d.callback(None))
                gone.append(d.addTimeout(10, reactor))
        pool.close()
        return defer.gatherResults(gone)

    @defer.inlineCallbacks
    def test_nodes_with_cluster_certificates_deliver_to_each_other(self):
        n1, n2 = self.nodes
        alice, alice_token = yield n1.user("alice")
        bob, bob_token = yield n2.user("bob")
        a = yield n1.connect(alice_token)
        self.addCleanup(a.close)
        b = yield n2.connect(bob_token)
        self.addCleanup(b.close)
        got = defer.Deferred()
        b.on_message = got.callback
        seq = yield a.send_text(bob, "across, encrypted")
        msg = yield got.addTimeout(20, reactor)
        self.assertEqual((seq, msg.sender_id, msg.content), (1, alice, b"across, encrypted"))
        self.assertIsNotNone(n1.service.cluster_tls)

    @defer.inlineCallbacks
    def test_peer_with_a_certificate_from_another_ca_is_refused(self):
        node = self.nodes[0]
        uid, token = yield node.user("carol")
        client = yield node.connect(token)
        self.addCleanup(client.close)
        rogue = CertificateAuthority(self.dir, "rogue CA").issue("node-x")
        with self.assertRaises(Exception) as caught:
            yield self.pool(node, rogue).call("n", "DeliverMessage", uid, push(uid, "forged"))
        self.assertNotIsInstance(caught.exception, AssertionError)
        # A plain-TCP peer (even one holding the cluster secret) gets nowhere either.
        with self.assertRaises(Exception) as caught:
            yield self.pool(node, None).call("n", "DeliverMessage", uid, push(uid, "plain"))
        self.assertNotIsInstance(caught.exception, AssertionError)
        # A genuine member still gets through afterwards.
        member = self.ca.issue("node-c")
        n = yield self.pool(node, member).call("n", "DeliverMessage", uid, push(uid, "genuine"))
        self.assertEqual(n, 1)
        yield services.poll_until(lambda: client.received, 10, what="the genuine push")
        self.assertEqual([m.content for m in client.received], [b"genuine"])
