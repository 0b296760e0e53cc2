"""Binary caches for the engine store: push entries to S3-compatible or file:// caches, pull them, substitute.

config      the catalogue's `[cache]` table and its environment overrides
objects     one cache URL as objects (obstore): layout, streaming upload/download, S3 settings
signing     ed25519 keys and signatures over cached manifests
transfer    push, pull (verified, resumable, published atomically under the hash's lock), substitution
"""
