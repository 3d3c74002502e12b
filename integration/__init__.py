"""Integration tests: real containerd, runc, the Go ttrpc peer (and later QEMU)."""
