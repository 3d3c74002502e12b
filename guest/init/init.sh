#!/bin/sh
# pykata guest /init (busybox sh): mounts, cgroups, kernel modules, loopback,
# then exec the agent so that it is PID 1 (it must reap zombies: orphans of the
# containers are re-parented to it).
#
# Kernel command line knobs:
#   pykata.selftest=1  run the self-test (python3 -m pykata_selftest): prints
#                      "PYKATA-SELFTEST-OK key=value ..." (or -FAIL) on the
#                      console, then powers off
#   pykata.debug=1     trace this script, kernel messages to the console,
#                      PYKATA_DEBUG=1 and import timings for Python
#   pykata.shell=1     a root shell on the console, next to the agent
#   pykata.cgroup=v2   only cgroup2 at /sys/fs/cgroup (default: one v1 hierarchy
#                      per controller plus cgroup2 at /sys/fs/cgroup/unified)
export PATH=/usr/sbin:/usr/bin HOME=/root TERM=linux
export PYTHONPATH=/usr/lib/pykata PYTHONUTF8=1 PYTHONDONTWRITEBYTECODE=1
PYTHON="/usr/bin/python3.11 -S"

mount -t proc -o nosuid,nodev,noexec proc /proc
read -r PYKATA_T_INIT _ < /proc/uptime
read -r cmdline < /proc/cmdline
SELFTEST=0 DEBUG=0 SHELL_ON_CONSOLE=0 CGROUP=hybrid ROOT_RO=0
for arg in $cmdline; do
    case "$arg" in
        ro) ROOT_RO=1 ;;
        pykata.selftest=1) SELFTEST=1 ;;
        pykata.debug=1) DEBUG=1 ;;
        pykata.shell=1) SHELL_ON_CONSOLE=1 ;;
        pykata.cgroup=v2) CGROUP=v2 ;;
    esac
done
if [ "$DEBUG" = 1 ]; then
    set -x
    echo 7 > /proc/sys/kernel/printk
    export PYKATA_DEBUG=1 PYTHONPROFILEIMPORTTIME=1
fi
say() { echo "pykata-init: $*"; }

# Every command that is not a shell builtin is a process of its own, and under TCG each
# costs a few ms: so the mounts go in batches, one `mount -a` each, the fstab on stdin.
mounts() { mount -a -T /proc/self/fd/0 || say "mounting $1 failed"; }
mounts "sysfs, /dev, /run, /tmp" <<'FSTAB'
sysfs /sys sysfs nosuid,nodev,noexec 0 0
devtmpfs /dev devtmpfs nosuid,mode=0755 0 0
tmpfs /run tmpfs nosuid,nodev,mode=0755 0 0
tmpfs /tmp tmpfs nosuid,nodev,mode=1777 0 0
FSTAB
mkdir -p /dev/pts /dev/shm
mounts "/dev/pts, /dev/shm" <<'FSTAB'
devpts /dev/pts devpts nosuid,noexec,gid=5,mode=620,ptmxmode=666 0 0
shm /dev/shm tmpfs nosuid,nodev,mode=1777 0 0
FSTAB
if [ "$ROOT_RO" = 1 ]; then
    # the root is the guest image, read-only: the one file outside tmpfs that the agent
    # writes is /etc/resolv.conf, so a file of /run stands in for it
    : > /run/resolv.conf
    mount --bind /run/resolv.conf /etc/resolv.conf
fi
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr

# cgroups (runc needs them)
if [ "$CGROUP" = v2 ]; then
    mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
else
    mount -t tmpfs -o nosuid,nodev,noexec,mode=0755 cgroup /sys/fs/cgroup
    dirs="" fstab=""
    while read -r name _ _ enabled; do
        case "$name" in "#"*) continue ;; esac
        [ "$enabled" = 1 ] || continue
        dirs="$dirs /sys/fs/cgroup/$name"
        fstab="${fstab}cgroup /sys/fs/cgroup/$name cgroup nosuid,nodev,noexec,$name 0 0
"
    done < /proc/cgroups
    # shellcheck disable=SC2086 # one word per directory
    mkdir $dirs /sys/fs/cgroup/unified
    mounts "the cgroup hierarchies" <<FSTAB
${fstab}cgroup2 /sys/fs/cgroup/unified cgroup2 nosuid,nodev,noexec 0 0
FSTAB
fi
read -r PYKATA_T_MOUNTS _ < /proc/uptime

# kernel modules, dependencies first (the list is computed at build time; empty for
# pykata's own kernel, which has everything built in and no module support at all:
# no /proc/modules). After the image's first stage, some are loaded already.
if [ -e /proc/modules ]; then
    while read -r ko; do
        name=$(basename "$ko" .ko | tr - _)
        [ -d "/sys/module/$name" ] || insmod "$ko" || say "insmod $ko failed"
    done < /etc/pykata/modules
fi
read -r PYKATA_T_MODULES _ < /proc/uptime

ip link set lo up
hostname pykata
export PYKATA_T_INIT PYKATA_T_MOUNTS PYKATA_T_MODULES

if [ "$SHELL_ON_CONSOLE" = 1 ]; then
    say "root shell on the console"
    setsid cttyhack sh -l &
fi

if [ "$SELFTEST" = 1 ]; then
    read -r PYKATA_T_PYEXEC _ < /proc/uptime
    export PYKATA_T_PYEXEC
    $PYTHON -m pykata_selftest
    say "selftest exited with status $?"
    if [ "$SHELL_ON_CONSOLE" = 1 ]; then wait; fi
    sync
    poweroff -f
fi

if [ -e /usr/lib/pykata/agent/__main__.py ]; then
    read -r PYKATA_T_PYEXEC _ < /proc/uptime
    export PYKATA_T_PYEXEC
    exec $PYTHON -m agent
fi

say "no agent in this image (agent/__main__.py missing)"
if [ "$SHELL_ON_CONSOLE" = 1 ]; then wait; fi
sync
poweroff -f
