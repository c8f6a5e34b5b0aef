"""
Sources: the one place that talks to the kernel or a vendor library through anything but a file read
(syscalls via ctypes, sockets, NVML). Collectors get a source injected and only convert its values.
"""
