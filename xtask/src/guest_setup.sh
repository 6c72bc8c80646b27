# The guest's init after the switch to the host's (overlaid) root; guest_script() sets
# RELEASE, MODULES, SSHTRACE, WORKSPACE, PATIENCE and CARRIED (one directory per line) before
# this, and appends the test runs and guest_finish.sh after it.
set -u
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# Tests write much to /tmp: a tmpfs, not the overlay over 9p (runs from a workspace under
# /tmp with /tmp left on the overlay stalled the guest). What the run needs below /tmp (the
# workspace, the target directory) is carried over onto the tmpfs by bind mounts.
# carry keep|restore: bind each carried directory to /run/vm-keep/N, or back.
carry() {
    i=0
    while IFS= read -r dir; do
        [ -n "$dir" ] || continue
        if [ "$1" = keep ]; then
            mkdir -p "/run/vm-keep/$i" && mount --bind "$dir" "/run/vm-keep/$i"
        else
            mkdir -p "$dir" && mount --bind "/run/vm-keep/$i" "$dir"
        fi
        i=$((i + 1))
    done <<CARRIED_END
$CARRIED
CARRIED_END
}
carry keep
mount -t tmpfs tmpfs /tmp
carry restore
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
# Container storage cannot sit on the overlay root.
mkdir -p /var/lib/containers && mount -t tmpfs tmpfs /var/lib/containers
# The test kernel's modules, for the guest's modprobe.
mkdir -p "/lib/modules/$RELEASE"
mount --bind "$MODULES" "/lib/modules/$RELEASE"
hostname sshtrace-vm
ip link set lo up
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root SSHTRACE_BIN="$SSHTRACE" CI="${CI:-true}" SSHTRACE_VM_KERNEL="$RELEASE"
export SSHTRACE_TEST_PATIENCE="$PATIENCE"
echo "vm-test: $(uname -r), $(nproc) CPUs"
cd "$WORKSPACE/tests"
failed=0
