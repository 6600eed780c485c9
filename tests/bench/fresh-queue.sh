#!/bin/sh
# fresh-queue.sh DAEMON -c CONF: start dualwrited with an empty replay queue.
#
# peers.sh starts the candidate afresh for every repetition but fills the
# template once per run, so every repetition of a scenario shares one queue
# directory. The slow, down and hang scenarios queue every write (~40k/s, no
# replay running), and by the third repetition the queue reached
# queue.max_bytes: writes were then counted as lost, never journaled, and the
# repetition measured a cheaper path than the one it names. Each repetition
# starts from an empty queue instead.
set -eu
conf=
prev=
for a in "$@"; do
	[ "$prev" = "-c" ] && conf=$a
	prev=$a
done
if [ -n "$conf" ]; then
	q=$(sed -n 's/^queue *= *{ *path *= *"\([^"]*\)".*/\1/p' "$conf")
	case $q in
	/tmp/*) rm -rf "$q" ;;
	esac
fi
exec "$@"
