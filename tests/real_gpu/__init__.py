"""Checks of nodeagent's NVML path against a real NVIDIA GPU and driver, and captures of real readings as fixtures.

Everything that touches the real ``libnvidia-ml.so.1`` runs in a child process with a clean environment
(``child.real_env``): once the NVML test double is loaded into a process, every later ``CDLL("libnvidia-ml.so.1")``
there resolves to it. See README.md.
"""
