"""Generated protobuf modules for ``proto/gochat.proto`` (regenerate with ``tox -e proto``)."""

from gochat.pb import gochat_pb2 as pb

__all__ = ["pb"]
