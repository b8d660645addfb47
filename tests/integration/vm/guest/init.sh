#!/bin/sh
# Payload init of the HyperTier test VM, exec'd by /sbin/ht-init (PID 1).
# Mounts tracefs, reports boot progress on the serial console, then keeps the
# test driver (guestd.py) running on the org.hypertier.test.0 virtio-serial port.
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug
mountpoint -q /run || mount -t tmpfs tmpfs /run
mountpoint -q /tmp || mount -t tmpfs tmpfs /tmp
mount -o remount,rw / 2>/dev/null
hostname ht-guest
# virtio_mem and virtio_console come from the initrd; load again in case they did not.
modprobe virtio_mem 2>/dev/null
modprobe virtio_console 2>/dev/null
# What udev would do: /dev/virtio-ports/<name> links for the virtio-serial ports.
mkdir -p /dev/virtio-ports
for port in /sys/class/virtio-ports/vport*; do
    [ -e "$port/name" ] && ln -sf "/dev/${port##*/}" "/dev/virtio-ports/$(cat "$port/name")"
done
echo "HT-INIT uptime=$(cut -d' ' -f1 /proc/uptime)" >/dev/console
export PYTHONPATH=/opt/hypertier/site
export PATH=/opt/hypertier/bin:/usr/sbin:/usr/bin:/sbin:/bin
while true; do
    python3 /opt/hypertier/guestd.py >/dev/console 2>&1
    echo "HT-INIT guestd exited rc=$?, restarting" >/dev/console
    sleep 1
done
