"""The options of reliable pushes and logging: parsed, defaulted, refused when bad."""

from __future__ import annotations

import io
import sys

from twisted.trial import unittest

from gochat.config import Options


class PushAndLogOptions(unittest.TestCase):
    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def refuse(self, *argv: str) -> str:
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        with self.assertRaises(SystemExit) as caught:
            self.parse(*argv)
        self.assertEqual(caught.exception.code, 2)
        return err.getvalue()

    def test_defaults(self):
        config = self.parse().config
        self.assertEqual(
            (config.push_retry_timeout, config.push_retries, config.push_window, config.log_format),
            (5.0, 3, 512, "text"),
        )

    def test_values_from_the_command_line_and_the_environment(self):
        self.patch(
            sys.modules["os"], "environ", {"GOCHAT_PUSH_RETRIES": "7", "GOCHAT_LOG_FORMAT": "json"}
        )
        config = self.parse("--push-retry-timeout=0.5", "--push-window=64").config
        self.assertEqual(
            (config.push_retry_timeout, config.push_retries, config.push_window, config.log_format),
            (0.5, 7, 64, "json"),
        )

    def test_bad_values_stop_with_one_line(self):
        for argv, words in (
            (["--push-retries=-1"], "--push-retries"),
            (["--push-window=0"], "--push-window"),
            (["--push-retry-timeout=soon"], "--push-retry-timeout"),
            (["--log-format=xml"], "--log-format"),
            (["--log-file=/tmp/x.log"], "--log-file"),
        ):
            message = self.refuse(*argv)
            self.assertIn(words, message)
            self.assertEqual(message.count("\n"), 1, message)
