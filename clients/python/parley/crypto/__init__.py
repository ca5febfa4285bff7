"""Client-side cryptography: pure functions over PyNaCl (libsodium), the standard library and
`cryptography`'s ML-KEM; no I/O (see docs/encryption.md)."""
