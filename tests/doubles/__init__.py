"""Test doubles of the peers nodeagent talks to, following their public protocols; nothing real runs behind them:
the kubelet's PodResources v1 gRPC server and the Docker Engine HTTP API (unix sockets), Logstash's beats input
(Lumberjack v2, ``lumberjack.py``) and http input (``logstash_http.py``), plus ``tls.py`` for throwaway CAs and
certificates. Each is checked with an independent client (a plain gRPC channel, the ``docker`` SDK, ``pylogbeat``,
urllib).
"""
