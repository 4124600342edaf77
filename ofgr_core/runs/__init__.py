"""Run folders: paths, the one-writer lock, typed events and the event log, run state, compute accounting."""
