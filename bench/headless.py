"""Headless Chromium as the dashboard tests and the render benchmark launch it (one definition,
in bench/, which the tests may import: the benchmarks never import the tests)."""

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
