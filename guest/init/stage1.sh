#!/bin/busybox sh
# pykata first-stage /init for the guest image on a virtio-pmem device: load the
# modules that reach it, mount it read-only with DAX (the guest reads its files
# straight from the host's page cache, nothing is copied into guest RAM), put a
# tmpfs over it for writes, and hand over to the image's own /init.
BB=/bin/busybox
$BB mount -t proc proc /proc
$BB mount -t devtmpfs devtmpfs /dev
# (an empty list, and no /proc/modules, with pykata's own kernel: all built in)
if [ -e /proc/modules ]; then
    while read -r ko; do
        $BB insmod "$ko" || echo "pykata-stage1: insmod $ko failed"
    done < /etc/pykata/modules
fi
i=0
while [ ! -b /dev/pmem0 ] && [ $i -lt 1000 ]; do $BB usleep 5000; i=$((i + 1)); done
$BB mkdir -p /lower /upper /newroot
if ! $BB mount -t ext4 -o ro,dax=always /dev/pmem0 /lower; then
    echo "pykata-stage1: no DAX on /dev/pmem0: mounting it without"
    $BB mount -t ext4 -o ro /dev/pmem0 /lower || { echo "pykata-stage1: no guest image"; $BB poweroff -f; }
fi
$BB mount -t tmpfs -o mode=0755 tmpfs /upper
$BB mkdir /upper/data /upper/work
$BB mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay /newroot
# the image stays visible (read-only, as mounted) at /mnt/image of the new root
$BB mkdir -p /newroot/mnt/image
$BB mount --move /lower /newroot/mnt/image
$BB umount /proc
$BB umount /dev
exec $BB switch_root /newroot /init
