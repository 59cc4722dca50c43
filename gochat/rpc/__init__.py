"""Node-to-node delivery over Perspective Broker (cluster mode).

The server side (:mod:`gochat.rpc.server`) lets a peer that logged in with the
cluster secret hand pushes to this node's hub; the client side
(:mod:`gochat.rpc.client`) keeps a connection to each peer and is the hub's
remote deliverer. Neither decides where a push goes (the router does) nor
touches the store.
"""

from gochat.rpc.client import PeerPool
from gochat.rpc.server import (
    ClusterSecretChecker,
    NodeRealm,
    build_rpc_factory,
    load_cluster_secret,
)

__all__ = [
    "ClusterSecretChecker",
    "NodeRealm",
    "PeerPool",
    "build_rpc_factory",
    "load_cluster_secret",
]
