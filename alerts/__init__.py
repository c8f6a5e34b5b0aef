"""nodeagent's Prometheus alerting rules, generated from one configuration (``alerts/rules.py``)."""
