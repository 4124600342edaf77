"""The end-to-end operations front ends call: a run's pipeline, benchmark suites, the demo."""
