"""The abuse suite: malformed and hostile requests against a live server (``python -m loadtest.abuse``)."""
