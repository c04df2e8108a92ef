"""The only place that wires several stages together: open a probe, retrieve, run a report."""
