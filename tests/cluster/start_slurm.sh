#!/usr/bin/env bash
# Start a one-node Slurm cluster on this machine for the Slurm tests (Debian 12, root, no
# systemd): install Slurm 22.05 and munge if missing, start munged, slurmctld and slurmd by hand,
# with fake GPUs (gres.conf File= symlinks to /dev/null; a Count= without File= drains the node).
#
#   tests/cluster/start_slurm.sh STATE_DIR [GPUS]    then: export SLURM_CONF=STATE_DIR/slurm.conf
#
# Daemons left by an earlier session are stopped first, by their pid files (a second slurmctld
# silently kills the first). Stop with tests/cluster/stop_slurm.sh STATE_DIR.
set -euo pipefail

state=${1:?usage: start_slurm.sh STATE_DIR [GPUS]}
gpus=${2:-8}
here=$(cd "$(dirname "$0")" && pwd)
umask 022

if ! command -v slurmctld >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    pkgs=(slurmctld slurmd slurm-client munge)
    apt-get install -y --no-install-recommends "${pkgs[@]}" >/dev/null \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${pkgs[@]}" >/dev/null; }
fi

"$here/stop_slurm.sh" "$state" || true
mkdir -p "$state"
state=$(cd "$state" && pwd)

# munge: the key readable by its owner only; the pid file in a directory munge can write.
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid
    touch "$state/munged.ours"
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
fi

# slurmctld's directory (state, pid file, log) must belong to SlurmUser, or it dies after
# exiting 0.
install -d -o slurm -g slurm -m 0755 "$state/ctld"
install -d -m 0755 "$state/slurmd" "$state/gpus"
chmod 0755 "$state"
for i in $(seq 0 $((gpus - 1))); do
    ln -sfn /dev/null "$state/gpus/gpu$i"
done
cpus=$(( $(nproc) > 8 ? $(nproc) : 8 ))

cat >"$state/gres.conf" <<EOF
NodeName=localhost Name=gpu File=$state/gpus/gpu[0-$((gpus - 1))]
EOF

cat >"$state/slurm.conf" <<EOF
# One-node test cluster written by tests/cluster/start_slurm.sh.
ClusterName=evalkit-test
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/slurmd
SlurmctldPidFile=$state/ctld/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/ctld/slurmctld.log
SlurmdLogFile=$state/slurmd.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobCompType=jobcomp/filetxt
JobCompLoc=$state/ctld/jobcomp.txt
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SchedulerParameters=batch_sched_delay=0,sched_interval=1
DependencyParameters=kill_invalid_depend
# The node may claim more CPUs than this machine has: eight array tasks share two cores.
SlurmdParameters=config_overrides
MinJobAge=3600
KillWait=5
ReturnToService=2
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus Gres=gpu:$gpus State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

export SLURM_CONF="$state/slurm.conf"
slurmctld -c -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"

for _ in $(seq 100); do
    node_state=$(timeout 5 sinfo -h -n localhost -o %T 2>/dev/null || true)
    case "$node_state" in
        idle*|mixed*|allocated*) echo "slurm up: $SLURM_CONF"; exit 0 ;;
        down*|drain*) scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.2
done
echo "slurm did not come up (node state: ${node_state:-none}); see $state/slurmd.log and $state/ctld/slurmctld.log" >&2
exit 1
