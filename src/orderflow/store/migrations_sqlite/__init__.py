"""The SQLite file's versioned schema: one SQL file per migration (0001_orders.sql, …), applied
in name order, each in the transaction that records it in schema_migrations and sets the file's
user_version to its number. A change to the schema is a new file, never an edit."""
