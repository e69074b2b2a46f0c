"""What operators use: dead letters, the timeline, stuck work, the event log, the console."""
