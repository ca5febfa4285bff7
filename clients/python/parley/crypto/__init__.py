"""Client-side cryptography built from PyNaCl (libsodium) primitives."""
