"""
Fault injection for the host and kernel half of the fault matrix (docs/reliability.md): a FUSE file system whose
daemon can be stopped so that statfs blocks in the kernel, an agent started in a private mount and PID namespace
that holds such a mount, and loops that create and remove cgroups, network namespaces and processes while the
agent samples them.
"""
