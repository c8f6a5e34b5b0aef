"""Tests of the NVML test double."""
