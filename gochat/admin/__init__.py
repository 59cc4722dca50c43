"""Operator commands (``gochat-admin``), run beside a stopped node, never inside one.

It owns moving data in (:mod:`gochat.admin.gochat_import`); it reaches the
node's database only through the node's own engine classes and schema.
"""
