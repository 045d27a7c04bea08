"""Browser tests of the console: real headless Chromium against a real server."""
