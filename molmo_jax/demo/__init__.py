"""`make demo`: the whole pipeline, from synthetic data to a report, on one CPU."""
