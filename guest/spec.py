"""What goes into the guest: every interesting set in one place, as plain data.

Change the guest by editing this file. The builder reads nothing else to decide
which packages, kernel modules, libraries and stdlib parts end up in the initrd.
"""

from __future__ import annotations

# --- Kernel -------------------------------------------------------------------
#: Meta package whose Depends names the current versioned kernel package.
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"

#: Modules the guest loads at boot. Their dependencies are read from modules.dep,
#: so listing the leaf drivers is enough; the order of loading is computed.
GUEST_MODULES: tuple[str, ...] = (
    "virtio_pci",  # the PCI transport of every virtio device
    "virtio_net",  # eth0 (pulls failover, net_failover)
    "virtio_console",  # virtio-serial: the agent channel agent.channel.0
    "virtiofs",  # the shared container rootfs (pulls fuse)
    "vmw_vsock_virtio_transport",  # vsock agent channel on hosts with vhost-vsock
    "overlay",  # container rootfs layering
    # Entropy from the host (-device virtio-rng-pci). Without it (or RDRAND, e.g.
    # -cpu qemu64,+rdrand) the first read of randomness (Python's hash seed at
    # start-up) waits ~1 s under TCG for the kernel's jitter entropy.
    "virtio_rng",
    # Free page reporting: the guest hands pages it freed back to the host (QEMU punches
    # them out of guest RAM), e.g. the initrd's copy once it is unpacked.
    "virtio_balloon",
)

#: Modules shipped but not loaded at boot: the kernel asks for them when a rule
#: needs them (through /sbin/modprobe, busybox's, which reads the modules.dep
#: and modules.alias depmod writes). nf_tables for iptables-nft, and the
#: xtables matches and targets that iptables rules commonly use (through
#: nft_compat). A rule needing a module not listed here fails in
#: iptables-restore with the kernel's own words.
ON_DEMAND_MODULES: tuple[str, ...] = (
    "nf_tables", "nft_compat", "nft_chain_nat", "nft_nat", "nft_masq", "nft_redir",
    "nft_reject_inet", "nft_reject_ipv4", "nft_reject_ipv6", "nft_ct", "nft_limit", "nft_log",
    "nft_fib_inet", "nft_fib_ipv4", "nft_fib_ipv6",
    "xt_comment", "xt_conntrack", "xt_state", "xt_tcpudp", "xt_multiport", "xt_mark",
    "xt_connmark", "xt_MASQUERADE", "xt_nat", "xt_REDIRECT", "xt_addrtype", "xt_limit",
    "xt_LOG", "nf_log_syslog", "xt_owner", "xt_statistic", "xt_recent", "xt_CT", "xt_TCPMSS",
    "xt_tcpmss", "xt_iprange", "xt_mac", "xt_pkttype", "xt_length", "xt_hl", "xt_HL",
    "xt_dscp", "xt_DSCP", "xt_NFLOG", "nfnetlink_log", "xt_NFQUEUE", "nfnetlink_queue",
    "xt_helper", "xt_connlimit", "xt_quota", "xt_time", "xt_esp", "xt_policy", "xt_u32",
    "xt_CHECKSUM", "ipt_REJECT", "ip6t_REJECT",
)  # fmt: skip

# --- Debian packages unpacked into the guest -----------------------------------
#: Programs: package -> the files we take from it (paths inside the package).
PROGRAM_PACKAGES: dict[str, tuple[str, ...]] = {
    "busybox-static": ("bin/busybox",),
    "python3.11-minimal": ("usr/bin/python3.11",),
    "runc": ("usr/sbin/runc",),
    # The agent's OCI runtime when present (runc is the fallback: PYKATA_OCI_RUNTIME=runc
    # on the kernel command line). C, not Go: CreateContainer 0.11 s against 0.28 s under TCG.
    "crun": ("usr/bin/crun",),
    # GetIPTables/SetIPTables: iptables-nft (Debian's default iptables; the legacy
    # variant would need the ip_tables modules as well). One binary, named by argv[0].
    "iptables": ("usr/sbin/xtables-nft-multi",),
}

#: Symlinks in the guest: link -> target (relative to the link's folder).
PROGRAM_LINKS: dict[str, str] = {
    "usr/bin/runc": "../sbin/runc",
    **{
        f"usr/sbin/{family}{suffix}": "xtables-nft-multi"
        for family in ("iptables", "ip6tables")
        for suffix in ("", "-save", "-restore", "-nft", "-nft-save", "-nft-restore")
    },
}

#: Plugin folders taken from a package: (package, folder, file name prefixes kept).
#: Plugins are loaded with dlopen, so their own DT_NEEDED joins the closure.
PLUGIN_TREES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # iptables' match and target extensions (not the ebtables/arptables ones)
    ("iptables", "usr/lib/x86_64-linux-gnu/xtables", ("libxt_", "libipt_", "libip6t_")),
)

#: Python's library tree comes from these (usr/lib/python3.11 of each).
PYTHON_PACKAGES: tuple[str, ...] = ("libpython3.11-minimal", "libpython3.11-stdlib")
PYTHON_VERSION = "3.11"

#: Shared libraries are searched for in these packages only; which files are
#: copied is decided by walking DT_NEEDED from the programs and the kept
#: extension modules. A soname no package here provides is a build error.
LIBRARY_PACKAGES: tuple[str, ...] = (
    "libc6",
    "zlib1g",  # python3.11 (zlib)
    "libexpat1",  # python3.11 (pyexpat)
    "libffi8",  # _ctypes
    "libbz2-1.0",  # _bz2
    "liblzma5",  # _lzma
    "libuuid1",  # _uuid
    "libstdc++6",  # google._upb._message
    "libgcc-s1",  # libstdc++, and glibc's pthread_cancel unwinding
    "libseccomp2",  # runc, crun
    "libyajl2",  # crun
    "libcap2",  # crun, libsystemd
    "libsystemd0",  # crun (its systemd cgroup manager, unused here, is linked in)
    "libgcrypt20",  # libsystemd
    "libgpg-error0",  # libgcrypt
    "libzstd1",  # libsystemd
    "liblz4-1",  # libsystemd
    "libxtables12",  # iptables and its extensions
    "libmnl0",  # iptables-nft
    "libnftnl11",  # iptables-nft
    "libnetfilter-conntrack3",  # iptables extensions (conntrack, connlabel)
    "libnfnetlink0",  # libnetfilter-conntrack3
)

#: Libraries that are loaded with dlopen (so DT_NEEDED does not show them).
DLOPEN_LIBRARIES: tuple[str, ...] = ("libgcc_s.so.1",)

# --- Python stdlib pruning ----------------------------------------------------
#: Top-level stdlib packages and modules left out (name without .py).
STDLIB_EXCLUDE: frozenset[str] = frozenset(
    {
        # tests, tools and docs
        "test", "idlelib", "tkinter", "turtledemo", "turtle", "ensurepip", "lib2to3",
        "pydoc_data", "pydoc", "doctest", "unittest", "distutils", "venv", "__phello__",
        "config-3.11-x86_64-linux-gnu", "site-packages", "dist-packages",
        # need libraries we do not ship (openssl, sqlite, ncurses, berkeley db, ...)
        "ssl", "sqlite3", "dbm", "shelve", "curses", "crypt", "nis", "spwd",
        # Windows, sound, mail boxes, old formats: never used by the agent
        "msilib", "_msi", "winreg", "nturl2path", "_aix_support", "_osx_support",
        "audioop", "aifc", "sunau", "wave", "chunk", "sndhdr", "imghdr", "ossaudiodev",
        "mailbox", "mailcap", "nntplib", "smtpd", "smtplib", "poplib", "imaplib",
        "telnetlib", "ftplib", "xdrlib", "cgi", "cgitb", "uu", "pipes", "wsgiref",
        "xmlrpc", "tabnanny", "_pydecimal", "_pyio",
        # compression formats the agent never reads; shutil imports them when present,
        # two libraries to load in the first CreateContainer (~20 ms under TCG)
        "bz2", "lzma",
    }
)

#: Extension modules (lib-dynload, name before the first dot) left out.
DYNLOAD_EXCLUDE: frozenset[str] = frozenset(
    {
        "_ssl", "_hashlib",  # libssl/libcrypto: hashlib falls back to built-ins
        "_sqlite3", "_curses", "_curses_panel", "_dbm", "_gdbm", "readline", "nis",
        "_crypt", "audioop", "ossaudiodev", "_bz2", "_lzma",  # see bz2 and lzma above
        "_ctypes_test", "_testbuffer", "_testcapi", "_testclinic", "_testimportmultiple",
        "_testinternalcapi", "_testmultiphase", "_xxtestfuzz", "xxlimited", "xxlimited_35",
        "_xxsubinterpreters",
        # CJK codecs: the codec lookup reports them unknown
        "_codecs_cn", "_codecs_hk", "_codecs_iso2022", "_codecs_jp", "_codecs_kr",
        "_codecs_tw", "_multibytecodec",
    }
)

#: The stdlib is shipped as .pyc only (no .py): half the bytes to decompress at
#: boot. Our own packages keep their sources so tracebacks show lines.
STDLIB_SOURCELESS = True

#: Modules that must import with the staged interpreter (checked at build time).
MUST_IMPORT: tuple[str, ...] = (
    "asyncio", "json", "logging", "subprocess", "socket", "signal", "struct",
    "ctypes", "hashlib", "uuid", "argparse", "dataclasses", "enum", "typing",
    "concurrent.futures", "shutil", "tempfile", "selectors", "ipaddress",
    "google.protobuf", "google._upb._message",
)

# --- Python packages copied from the host -----------------------------------
#: Top-level packages of this repository copied into the guest (if present); nothing
#: of `shim`: what both sides need (the Prometheus text writer, the share's tag and
#: place) is in `pykata_common`.
REPO_PACKAGES: tuple[str, ...] = ("ttrpc", "protos", "pykata_common", "agent")
#: Host-only files of those packages, left out of the guest.
REPO_HOST_ONLY: frozenset[str] = frozenset({"protos/generate.py"})
#: Sub-trees of google.protobuf left out.
PROTOBUF_EXCLUDE: frozenset[str] = frozenset({"testdata", "__pycache__"})
PROTOBUF_EXCLUDE_SUFFIXES: tuple[str, ...] = ("_benchmark.py", ".pyi")

# --- Guest layout -------------------------------------------------------------
#: Our packages, google.protobuf and the selftest live here (PYTHONPATH).
GUEST_PYLIB = "usr/lib/pykata"
#: Ordered list of module files /init loads with insmod.
GUEST_MODULE_LIST = "etc/pykata/modules"

# --- Host build tools: command -> Debian package ---------------------------
HOST_TOOLS: dict[str, str] = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "depmod": "kmod",
    "cpio": "cpio",
    "mkfs.ext4": "e2fsprogs",
}

# --- Host virtiofsd (trixie, private glibc) -----------------------------------
VIRTIOFSD_SUITE = "trixie"
VIRTIOFSD_PACKAGES: tuple[str, ...] = (
    "virtiofsd", "libc6", "libcap-ng0", "libseccomp2", "libgcc-s1",
)
VIRTIOFSD_PIN_PRIORITY = 50
