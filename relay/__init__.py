"""Nexus Relay: PostgreSQL changes to WebSocket subscribers, authorized like RLS."""
