"""The run machinery every stage stands on: typed config and profiles, the run-folder store, the run lock,
executors and row shards, table schemas and the student's format. It imports no stage, no trainer and no
Prefect (tests/test_layers.py); see docs/architecture.md."""
