"""ML-KEM-768 behind parley.crypto.kem: Wycheproof's vectors (key derivation from the 64-byte seed,
decapsulation including implicit rejection, malformed seeds and ciphertexts refused), kyber-py as an
independent oracle in both directions, and a clear error when the backend lacks ML-KEM."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import asymmetric
from cryptography.hazmat.primitives.asymmetric import mlkem
from kyber_py.ml_kem import ML_KEM_768  # type: ignore[import-untyped]

from parley.crypto.errors import InvalidKeyError, KemUnavailableError, MalformedInputError
from parley.crypto.kem import MlKem768, ml_kem_768_available
from tests.support import VECTORS


def mlkem_cases() -> list[dict[str, Any]]:
    document: dict[str, Any] = json.loads((VECTORS / "wycheproof" / "mlkem_768_test.json").read_text())
    cases = [case for group in document["testGroups"] for case in group["tests"]]
    assert len(cases) == document["numberOfTests"]
    assert {group["parameterSet"] for group in document["testGroups"]} == {"ML-KEM-768"}
    return cases


CASES = mlkem_cases()
KEM = MlKem768()


def test_vector_file_has_valid_decapsulations_and_malformed_inputs() -> None:
    assert sum(c["result"] == "valid" for c in CASES) >= 150
    comments = {c["comment"] for c in CASES if c["result"] == "invalid"}
    assert comments == {"Private key too short", "Private key too long", "Ciphertext too short", "Ciphertext too long"}


@pytest.mark.parametrize("case", CASES, ids=[f"tc{c['tcId']}" for c in CASES])
def test_mlkem768_wycheproof(case: dict[str, Any]) -> None:
    seed, ciphertext = bytes.fromhex(case["seed"]), bytes.fromhex(case["c"])
    if case["result"] == "invalid":
        with pytest.raises(MalformedInputError):
            KEM.decapsulate(seed, ciphertext)
        return
    assert KEM.public_key(seed).hex() == case["ek"]
    assert KEM.decapsulate(seed, ciphertext).hex() == case["K"]


def test_generate_takes_the_seed_from_the_rng() -> None:
    pair = KEM.generate(lambda n: bytes([3]) * n)
    assert pair.seed == bytes([3]) * 64
    assert pair.public_key == KEM.public_key(pair.seed)
    assert len(pair.public_key) == MlKem768.PUBLIC_KEY_BYTES


def test_our_encapsulation_opens_with_kyber_py_and_theirs_with_ours() -> None:
    pair = KEM.generate()
    ek, dk = ML_KEM_768.key_derive(pair.seed)
    assert ek == pair.public_key

    ours = KEM.encapsulate(pair.public_key)
    assert len(ours.ciphertext) == MlKem768.CIPHERTEXT_BYTES
    assert ML_KEM_768.decaps(dk, ours.ciphertext) == ours.shared_secret

    shared, ciphertext = ML_KEM_768.encaps(ek)
    assert KEM.decapsulate(pair.seed, ciphertext) == shared


def test_a_tampered_ciphertext_gives_an_unrelated_secret() -> None:
    pair = KEM.generate()
    encapsulation = KEM.encapsulate(pair.public_key)
    tampered = bytes([encapsulation.ciphertext[0] ^ 1]) + encapsulation.ciphertext[1:]
    assert KEM.decapsulate(pair.seed, tampered) != encapsulation.shared_secret


def test_encapsulate_refuses_malformed_public_keys() -> None:
    with pytest.raises(InvalidKeyError):
        KEM.encapsulate(bytes(MlKem768.PUBLIC_KEY_BYTES - 1))
    # Coefficients of 0xfff exceed q = 3329: FIPS 203's modulus check fails.
    with pytest.raises(InvalidKeyError):
        KEM.encapsulate(b"\xff" * MlKem768.PUBLIC_KEY_BYTES)


def test_unsupported_backend_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(data: bytes) -> None:
        raise UnsupportedAlgorithm("ML-KEM-768 is not supported by this backend.")

    monkeypatch.setattr(mlkem.MLKEM768PrivateKey, "from_seed_bytes", unsupported)
    assert not ml_kem_768_available()
    with pytest.raises(KemUnavailableError, match="does not offer ML-KEM-768"):
        MlKem768()


def test_cryptography_without_mlkem_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # As on cryptography < 47: no such module.
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.asymmetric.mlkem", None)
    monkeypatch.delattr(asymmetric, "mlkem")
    assert not ml_kem_768_available()
    with pytest.raises(KemUnavailableError, match="version 47 or later"):
        MlKem768()
