#!/usr/bin/env bash
# Start or stop a private Docker engine for the tests, beside any other engine on the machine.
#   engine.sh start RUNDIR [DATAROOT]   -> prints the DOCKER_HOST to use
#   engine.sh stop RUNDIR
# The engine has its own socket, pidfile and exec-root under RUNDIR, its own data-root (default
# RUNDIR/data; CI passes a cached one so imported base images survive between runs), no
# iptables and no bridge: containers use network_mode host or none. Installs docker.io with
# apt-get when dockerd is missing (fresh CI machine). Needs root.
set -euo pipefail
cmd=${1:?usage: engine.sh start|stop RUNDIR [DATAROOT]}
run=${2:?usage: engine.sh start|stop RUNDIR [DATAROOT]}

case $cmd in
start)
    if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
        echo "engine: installing docker.io and debootstrap with apt-get" >&2
        apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
            docker.io debootstrap >&2
    fi
    data=${3:-$run/data}
    mkdir -p "$run" "$data"
    sock=$run/docker.sock
    # setsid: the engine must not get the test runner's Ctrl-C before the containers do.
    setsid dockerd --storage-driver=overlay2 --iptables=false --ip-masq=false --bridge=none \
        --data-root "$data" --exec-root "$run/exec" --pidfile "$run/docker.pid" \
        -H "unix://$sock" >"$run/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 1 120); do
        if [ -S "$sock" ] && DOCKER_HOST="unix://$sock" docker version >/dev/null 2>&1; then
            # The tests run the launcher as an unprivileged user, like a user in the docker group.
            chmod 666 "$sock"
            echo "unix://$sock"
            exit 0
        fi
        if ! kill -0 $! 2>/dev/null; then break; fi
        sleep 0.5
    done
    echo "engine: dockerd did not start; last lines of $run/dockerd.log:" >&2
    tail -n 20 "$run/dockerd.log" >&2
    exit 1
    ;;
stop)
    pidfile=$run/docker.pid
    if [ -f "$pidfile" ]; then
        pid=$(cat "$pidfile")
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    # dockerd leaves its network namespace file mounted in the exec-root.
    awk -v run="$run/" 'index($2, run) == 1 {print $2}' /proc/mounts | sort -r \
        | xargs -r -n1 umount -l
    ;;
*) echo "usage: engine.sh start|stop RUNDIR [DATAROOT]" >&2; exit 2 ;;
esac
