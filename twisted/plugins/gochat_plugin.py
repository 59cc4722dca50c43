"""The ``twistd gochat`` plugin: it only names the options and makeService."""

from twisted.application.service import ServiceMaker

gochat = ServiceMaker(
    "GoChat",
    "gochat.tap",
    "An instant-messaging server wire-compatible with GoChat",
    "gochat",
)
