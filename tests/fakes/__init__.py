"""Loopback servers the tests start themselves: a Vertex AI REST stand-in, GCS (gcp-storage-emulator),
and Secret Manager."""
