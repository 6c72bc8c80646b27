#!/bin/sh
# Builds the root file system tarball of a test image (shared/CONTAINERS.md): Debian SUITE by
# debootstrap (minbase and openssh-server), with sshd's privilege-separation directory and
# root's ~/.ssh, written to TARBALL. Does nothing when TARBALL exists.
#
# One recipe for the tests (tests/src/podman.rs, which then imports it) and for
# `cargo xtask setup` (xtask/src/setup.rs, which starts it in the background on a fresh
# machine). The lock makes every other caller wait for the build under way instead of
# starting its own; the tarball appears whole (renamed from .partial) or not at all.
#
# Usage: sshbox-rootfs.sh SUITE TARBALL
set -eu
suite=$1
tarball=$2
mkdir -p "$(dirname "$tarball")"
exec 9>"$tarball.lock"
flock 9
[ -e "$tarball" ] && exit 0
rootfs=$(mktemp -d "${TMPDIR:-/tmp}/sshtrace-rootfs-$suite.XXXXXX")
# --one-file-system: an interrupted debootstrap may leave /proc or /sys mounted in it.
trap 'rm -rf --one-file-system "$rootfs" "$tarball.partial"' EXIT
start=$(date +%s)
debootstrap --variant=minbase --include=openssh-server "$suite" "$rootfs"
mkdir -p "$rootfs/run/sshd" "$rootfs/root/.ssh"
tar -C "$rootfs" -cf "$tarball.partial" .
mv "$tarball.partial" "$tarball"
echo "sshbox-rootfs: $suite in $(($(date +%s) - start)) s: $tarball"
