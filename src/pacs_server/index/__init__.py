"""The SQL index: models, engine set-up, migrations and the repository that owns all SQL."""
