"""conftest — fixtures of the dualwrited end-to-end suite.

Run from the repo root: `python3 -m pytest -q tests/e2e` with Debian's python3-pytest
(/usr/bin/python3 when a pyenv python3 without pytest comes first; binaries from
$DW_BUILD, default build/; DW_VALGRIND=1 runs the daemon under valgrind).

Fixtures: `backend` (a recording legacy origin), `make_backend` (more of
them), `dw` (a factory that starts a configured dualwrited), `daemon` (one
dualwrited in front of `backend` with default limits).

Every daemon a test started is stopped with SIGTERM when the test body
returns, and that stop is part of the test: a non-zero exit, a crash, a
valgrind error exit or a forbidden line in the log ("AddressSanitizer",
"runtime error:", "LeakSanitizer", "Assertion", "lost") fails the test
itself, so the summary stays "N passed, M failed". Each test is bounded by
an alarm so a hang fails instead of stalling the suite.
"""

import sys

import pytest

sys.dont_write_bytecode = True

import helpers  # noqa: E402
from backends import Backend  # noqa: E402

TEST_BOUND_S = 240 if helpers.VALGRIND else 60


# The alarm is for this suite's own modules; other files in tests/e2e keep
# their own bounds.
BOUNDED_MODULES = {"test_proxy", "test_limits", "test_smuggling", "test_lifecycle", "test_tls"}


@pytest.fixture(autouse=True)
def _bounded(request):
    if request.module.__name__ not in BOUNDED_MODULES:
        yield
        return
    with helpers.alarm(TEST_BOUND_S):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    outcome = yield
    daemons = getattr(item, "_dw_daemons", [])
    if outcome.excinfo is None:
        # The test passed so far: the clean stop is its last assertion.
        for d in daemons:
            d.finish()


@pytest.fixture
def make_backend():
    made = []

    def make(handler=None, name="legacy", tls=None):
        b = Backend(handler, name, tls=tls)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


@pytest.fixture
def backend(make_backend):
    return make_backend(name="legacy")


@pytest.fixture
def dw(request, tmp_path):
    """dw(upstreams={"legacy": url or {url, timeout_ms}}, limits={...}, extra={...},
    default_upstream="legacy", start=True, name="dw", env={...}) -> helpers.Daemon"""
    started = []
    request.node._dw_daemons = started
    counter = [0]

    def make(upstreams, limits=None, extra=None, default_upstream="legacy", start=True,
             name=None, env=None):
        counter[0] += 1
        d = helpers.Daemon(tmp_path, upstreams, default_upstream, limits, extra,
                           name=name or "dw%d" % counter[0], env=env)
        started.append(d)
        if start:
            d.start()
        return d

    yield make
    for d in started:
        # The test failed before the clean stop: kill, and show the log.
        was_alive = d.alive()
        d.kill()  # also closes the log file
        if not d.finished and d.proc is not None:
            print("--- log of %s (%s at teardown) ---\n%s" % (
                d.name, "killed" if was_alive else "exited %s" % d.proc.returncode,
                d.log_text()))


@pytest.fixture
def daemon(dw, backend):
    return dw({"legacy": {"url": backend.url, "timeout_ms": 5000}})
