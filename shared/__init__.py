"""Code shared by the API and the worker: settings, schema, queue format, seeding."""
