#!/bin/sh
# Install the Debian packages dualwrite needs to build, test, demo and bench.
# As root it installs what is missing (running apt-get update once first);
# otherwise it prints the exact command and fails.
set -eu
# mandoc lints the man pages, prometheus ships promtool (checks the alert
# rules; its own service is installed too, enabled where systemd runs),
# lintian checks the .deb of `make deb`.
PKGS="make gcc clang pkg-config libevent-dev libssl-dev libjansson-dev libconfig-dev libpq-dev
postgresql postgresql-client libcmocka-dev python3 python3-pytest curl valgrind wrk
mandoc prometheus lintian"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
	echo "dualwrite: missing Debian packages; run:" >&2
	echo "  sudo apt-get update && sudo apt-get install -y$missing" >&2
	exit 1
fi
echo "deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
