"""The project installs as a developer and as a user would: after
``pip install -e .`` and after ``pip install .`` in a fresh virtualenv,
``twistd --help`` lists ``gochat``.

The checkout is copied (its tracked files, as a clone has them) and installed
without dependencies or build isolation; the new virtualenv sees this
interpreter's packages through a ``.pth`` file, so no index is needed.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fresh_clone() -> str:
    """The tracked files of the checkout in a new directory."""
    target = tempfile.mkdtemp(prefix="gochat-clone-")
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    for name in tracked.decode().split("\0"):
        if name and os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(os.path.dirname(os.path.join(target, name)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(target, name))
    return target


def fresh_venv() -> str:
    """A virtualenv without packages of its own that sees this interpreter's (pip and
    setuptools included, so the build uses the same as the tests)."""
    venv = tempfile.mkdtemp(prefix="gochat-venv-")
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", venv], check=True, capture_output=True
    )
    purelib = subprocess.run(
        [
            os.path.join(venv, "bin", "python"),
            "-c",
            "import sysconfig;print(sysconfig.get_paths()['purelib'])",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    with open(os.path.join(purelib, "zz_gochat_test_deps.pth"), "w") as f:
        f.write("\n".join(dict.fromkeys(ours)) + "\n")
    return venv


class Install(unittest.TestCase):
    timeout = 300

    def setUp(self) -> None:
        if shutil.which("git") is None or not os.path.exists(os.path.join(ROOT, ".git")):
            raise unittest.SkipTest("needs a git checkout")

    def install_and_list_plugins(self, *pip_args: str) -> str:
        clone, venv = fresh_clone(), fresh_venv()
        self.addCleanup(shutil.rmtree, clone, True)
        self.addCleanup(shutil.rmtree, venv, True)
        python = os.path.join(venv, "bin", "python")
        pip = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
        done = subprocess.run([*pip, *pip_args], cwd=clone, capture_output=True, text=True)
        self.assertEqual(done.returncode, 0, done.stderr[-3000:])
        # Run from elsewhere: the checkout must not be found by accident.
        elsewhere = tempfile.mkdtemp(prefix="gochat-elsewhere-")
        self.addCleanup(shutil.rmtree, elsewhere, True)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        twistd = "from twisted.scripts.twistd import run; run()"
        return subprocess.run(
            [python, "-c", twistd, "--help"],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        ).stdout

    def test_editable_install_lists_the_gochat_plugin(self):
        self.assertRegex(self.install_and_list_plugins("-e", "."), r"\n\s+gochat\s")

    def test_plain_install_lists_the_gochat_plugin(self):
        self.assertRegex(self.install_and_list_plugins("."), r"\n\s+gochat\s")
