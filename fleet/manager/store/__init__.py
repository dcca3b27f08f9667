"""The manager's storage: database and migrations, models, the group-commit writer, and the registry of known nodes."""
