#!/usr/bin/env bash
# Stop the test cluster started by start_slurm.sh STATE_DIR: slurmd, slurmctld and (if that
# script started it) munged, each by its pid file, never by name.
set -uo pipefail

state=${1:?usage: stop_slurm.sh STATE_DIR}

stop() {  # stop PIDFILE COMMAND: TERM the pid if it still runs COMMAND, wait, then KILL
    local pidfile=$1 comm=$2 pid
    [ -s "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ]; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 100); do
            [ -e "/proc/$pid" ] || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$pidfile"
}

stop "$state/slurmd.pid" slurmd
stop "$state/ctld/slurmctld.pid" slurmctld
if [ -e "$state/munged.ours" ]; then
    stop /run/munge/munged.pid munged
    rm -f "$state/munged.ours"
fi
exit 0
