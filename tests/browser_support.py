"""Debian's Chromium for the tests that drive a web page with Playwright (never a browser of Playwright's own)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
# What runs here (closed network, root, no GPU): see the machine notes; the autoplay flag lets a test press play.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"]  # fmt: skip


# apt-get's time, all told, stays well under pytest's per-test --timeout (600 s), so a slow mirror skips, not fails.
APT_TIMEOUTS_S = {"update": 120, "install": 300}


def chromium() -> str:
    """Debian's Chromium, installed with apt-get where it is missing and this process may; else skip with why."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{CHROMIUM} is missing and apt-get cannot install it here (not root, or no apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        timeout = APT_TIMEOUTS_S[command[1]]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            pytest.skip(f"`{' '.join(command)}` did not finish in {timeout} s")
        if done.returncode:
            pytest.skip(f"`{' '.join(command)}` failed: {done.stderr.strip().splitlines()[-1:]}")
    return CHROMIUM

