"""The security options: parsed into Config, and refused with one clear line."""

from __future__ import annotations

import os
import tempfile

from twisted.trial import unittest

from gochat.config import _PARAMS, ConfigError, build_config, env_name
from tests.certs import CertificateAuthority


def options(**overrides: str | None) -> dict:
    opts = {name: default for name, _short, default, _doc in _PARAMS}
    opts.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return opts


class SecurityOptions(unittest.TestCase):
    def setUp(self):
        for name, *_ in _PARAMS:
            value = os.environ.pop(env_name(name), None)
            if value is not None:
                self.addCleanup(os.environ.__setitem__, env_name(name), value)

    def test_defaults(self):
        config = build_config(options())
        self.assertEqual(
            (
                config.max_connections,
                config.max_unauthenticated,
                config.max_send_buffer,
                config.msg_rate,
                config.msg_burst,
                config.auth_rate,
                config.auth_burst,
                config.register_rate,
                config.register_burst,
                config.cluster_ca,
            ),
            (20000, 1000, 4 * 1024 * 1024, 1000.0, 5000, 20.0, 10, 600.0, 1000, None),
        )

    def test_values_are_parsed(self):
        config = build_config(
            options(
                max_connections="5",
                max_unauthenticated="2",
                max_send_buffer="65536",
                msg_rate="2.5",
                msg_burst="7",
                auth_rate="3",
                auth_burst="4",
                register_rate="5",
                register_burst="6",
            )
        )
        self.assertEqual(
            (
                config.max_connections,
                config.max_unauthenticated,
                config.max_send_buffer,
                config.msg_rate,
                config.msg_burst,
                config.auth_rate,
                config.auth_burst,
                config.register_rate,
                config.register_burst,
            ),
            (5, 2, 65536, 2.5, 7, 3.0, 4, 5.0, 6),
        )

    def test_nonsense_numbers_are_refused(self):
        for name, value in (
            ("max_connections", "0"),
            ("max_unauthenticated", "-1"),
            ("max_send_buffer", "1000"),
            ("msg_rate", "0"),
            ("msg_burst", "lots"),
            ("auth_rate", "nan"),
            ("auth_burst", "0"),
            ("register_rate", "-1"),
            ("register_burst", "none"),
        ):
            with self.assertRaises(ConfigError, msg=name) as caught:
                build_config(options(**{name: value}))
            self.assertIn("--" + name.replace("_", "-"), str(caught.exception))

    def test_cluster_tls_needs_the_ca_and_the_certificate_together(self):
        with self.assertRaises(ConfigError):
            build_config(options(cluster_ca="/nonexistent/ca.pem"))
        with self.assertRaises(ConfigError):
            build_config(options(cluster_cert="/nonexistent/node.pem"))
        with self.assertRaises(ConfigError):
            build_config(options(cluster_key="/nonexistent/node.key"))

    def test_unreadable_or_mismatched_cluster_files_are_one_line_errors(self):
        directory = tempfile.mkdtemp(prefix="gochat-cfg-tls-")
        ca = CertificateAuthority(directory)
        a, b = ca.issue("node-a"), ca.issue("node-b")
        with self.assertRaises(ConfigError) as caught:
            build_config(options(cluster_ca=ca.files.cert_path, cluster_cert=directory + "/no"))
        self.assertIn("--cluster-cert", str(caught.exception))
        with self.assertRaises(ConfigError):
            build_config(
                options(
                    cluster_ca=ca.files.cert_path, cluster_cert=a.cert_path, cluster_key=b.key_path
                )
            )
        with self.assertRaises(ConfigError) as caught:
            build_config(options(cluster_ca=a.key_path, cluster_cert=a.cert_path))
        self.assertIn("--cluster-ca", str(caught.exception))
        config = build_config(
            options(cluster_ca=ca.files.cert_path, cluster_cert=a.cert_path, cluster_key=a.key_path)
        )
        self.assertEqual(config.cluster_cert, a.cert_path)
        with self.assertRaises(ConfigError) as caught:
            build_config(
                options(
                    cluster_ca=ca.files.cert_path,
                    cluster_cert=a.cert_path,
                    cluster_key=a.key_path,
                    rpc=f"ssl:9092:privateKey={a.key_path}:certKey={a.cert_path}",
                )
            )
        self.assertIn("--rpc", str(caught.exception))
        # The key may sit in the certificate file.
        both = os.path.join(directory, "both.pem")
        with open(both, "wb") as f:
            f.write(a.cert_pem + a.key_pem)
        config = build_config(options(cluster_ca=ca.files.cert_path, cluster_cert=both))
        self.assertIsNone(config.cluster_key)
