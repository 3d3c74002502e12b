"""Files that run inside the guest: /init (init.sh) and the self-test module.

They are copied into the initrd as files; nothing on the host imports them.
"""
