"""The Locust load test (``locust -f loadtest/locust/locustfile.py``)."""
