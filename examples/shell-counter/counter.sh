#!/bin/sh
# counter.sh: a command life in POSIX shell that checkpoints synchronously.
#
# It counts on from its restored state ($IMMORTALD_STATE_DIR/state, a
# decimal number; none: 0), writes each count to the state file atomically
# (a temporary file in the same directory, then a rename) and every $EVERY
# counts runs `immortald checkpoint`: once that returns 0, the count is what
# the next holder of the life restores, even if the member is SIGKILLed the
# moment after.
#
# Settings, from the kind's env:
#   EVERY        checkpoint every EVERY counts (default 10)
#   INTERVAL     seconds between counts (default 0.1)
#   COUNT_TO     stop counting at this count, checkpointed, and wait to be
#                stopped (default 0: count forever)
#   COUNTER_LOG  file to append "start TOKEN N" (N restored) and
#                "checkpointed TOKEN N" lines to (default: none)
# `immortald` must be on the kind's PATH, e.g.
#   env: {PATH: "/usr/local/bin:/usr/bin:/bin", EVERY: "10"}
set -u
every=${EVERY:-10}
interval=${INTERVAL:-0.1}
count_to=${COUNT_TO:-0}
log() {
	if [ -n "${COUNTER_LOG:-}" ]; then echo "$*" >>"$COUNTER_LOG"; fi
}
cd "$IMMORTALD_STATE_DIR" || exit 1
n=$(cat state 2>/dev/null)
n=${n:-0}
case $n in
*[!0-9]*) echo "counter.sh: the state file holds '$n', not a count" >&2; exit 1 ;;
esac
log "start $IMMORTALD_FENCING_TOKEN $n"
# The state file is always whole: the member checkpoints it after the exit.
trap 'exit 0' TERM
while [ "$count_to" -eq 0 ] || [ "$n" -lt "$count_to" ]; do
	n=$((n + 1))
	printf '%s\n' "$n" >state.tmp && mv state.tmp state || exit 1
	if [ $((n % every)) -eq 0 ] || [ "$n" -eq "$count_to" ]; then
		immortald checkpoint
		case $? in
		0) log "checkpointed $IMMORTALD_FENCING_TOKEN $n" ;;
		3) exit 0 ;; # fenced: this holder no longer holds the life
		*) ;;        # not confirmed (said on stderr): a later checkpoint, or the member's periodic copy, catches up
		esac
	fi
	sleep "$interval"
done
while :; do sleep 1; done
