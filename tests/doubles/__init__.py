"""Test doubles of the node-local APIs nodeagent reads: the kubelet's PodResources v1 gRPC server and the
Docker Engine HTTP API, each on a unix socket. They follow the public protocols; nothing real runs behind them.
``test_doubles.py`` checks them with independent clients (a plain gRPC channel, the ``docker`` SDK).
"""
