#!/usr/bin/env python3
"""Make Tests/Interop/Fixtures/interop.json: values produced by an independent implementation
(Python `cryptography`) that the Swift InteropTests must open and verify.

Run once and commit the result; running again makes new keys and new random values:

    python3 Tests/Interop/make_fixtures.py

Parameters are the contract's (docs: wire-protocol.md section 2): RSA-OAEP with SHA-256 and
MGF1-SHA-256 and label b"parley"; RSA-PSS with SHA-256, MGF1-SHA-256, salt length 222;
AES-256-GCM with a 96-bit IV, the 16-byte tag appended, no additional data.
"""

import base64
import hashlib
import json
import os
import sys

import cryptography
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

HERE = os.path.dirname(os.path.abspath(__file__))
OUTPUT = os.path.join(HERE, "Fixtures", "interop.json")
PASSPHRASE = "correct horse"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def oaep() -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=b"parley")


def pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=222)


def spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def der(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + der_length(len(body)) + body


def rsa_pss_spki(public_key) -> bytes:
    """An SPKI whose algorithm is id-RSASSA-PSS (1.2.840.113549.1.1.10): a PSS-restricted key."""
    pkcs1 = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    algorithm = der(0x30, der(0x06, bytes.fromhex("2a864886f70d01010a")))
    return der(0x30, algorithm + der(0x03, b"\x00" + pkcs1))


def der_integer(value: int) -> bytes:
    return der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def mismatched_pkcs8_pem(private_key) -> str:
    """PKCS#8 of an RSA key whose private exponent d is corrupted (d + 2): every field parses,
    and CRT signing would still work, but the pair is inconsistent."""
    numbers = private_key.private_numbers()
    fields = [0, numbers.public_numbers.n, numbers.public_numbers.e, numbers.d + 2, numbers.p, numbers.q,
              numbers.dmp1, numbers.dmq1, numbers.iqmp]
    rsa_private_key = der(0x30, b"".join(der_integer(f) for f in fields))
    algorithm = der(0x30, der(0x06, bytes.fromhex("2a864886f70d010101")) + b"\x05\x00")
    info = der(0x30, der_integer(0) + algorithm + der(0x04, rsa_private_key))
    body = base64.encodebytes(info).decode("ascii")
    return f"-----BEGIN PRIVATE KEY-----\n{body}-----END PRIVATE KEY-----\n"


def main() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key()
    public_der = spki(public)

    plain_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    encrypted_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSPHRASE.encode("utf-8")),
    ).decode("ascii")

    channel_key = os.urandom(32)
    oaep_plaintexts = [
        ("channel key (32 bytes)", channel_key),
        ("empty", b""),
        ("short text", "parley ✓".encode("utf-8")),
        ("maximum length for 2048 bits (190 bytes)", bytes(range(190))),
    ]
    oaep_cases = [
        {"name": name, "plaintext_b64": b64(p), "ciphertext_b64": b64(public.encrypt(p, oaep()))}
        for name, p in oaep_plaintexts
    ]

    pss_messages = [
        ("empty", b""),
        ("ascii", b"hello, parley"),
        ("utf-8", "Grüße, 世界 🙂".encode("utf-8")),
        ("membership text", b"parley.membership.v1:0b7c2a6e-3f1d-4e5a-9c8b-7a6f5e4d3c2b:1::1700000000:"
                            b"11111111-1111-4111-8111-111111111111:11111111-1111-4111-8111-111111111111"),
        ("binary 1 KiB", bytes((i * 7 + 3) % 256 for i in range(1024))),
    ]
    pss_cases = [
        {"name": name, "message_b64": b64(m), "signature_b64": b64(key.sign(m, pss(), hashes.SHA256()))}
        for name, m in pss_messages
    ]

    # Fixed keys and IVs so these boxes are deterministic.
    gcm_inputs = [
        ("empty plaintext", bytes(range(32)), bytes(range(100, 112)), b""),
        ("one block", bytes(range(32, 64)), bytes(range(12)), b"sixteen bytes!!!"),
        ("utf-8 text", bytes([0x42] * 32), bytes([0x24] * 12), "Grüße: 👋 — ok".encode("utf-8")),
        ("1000 bytes", bytes(range(255, 223, -1)), bytes(range(200, 212)), bytes(i % 251 for i in range(1000))),
    ]
    gcm_cases = [
        {
            "name": name,
            "key_b64": b64(k),
            "iv_b64": b64(iv),
            "plaintext_b64": b64(p),
            "ciphertext_b64": b64(AESGCM(k).encrypt(iv, p, None)),
        }
        for name, k, iv, p in gcm_inputs
    ]

    # A message as the contract frames it (section 7).
    channel_id = "3f2b8c1e-9a4d-4f6b-8e2c-1d5a7b9c0e3f"
    ts = 1735689600
    body = "Grüße aus Zürich: 👋 see you at 10:30 — ok?"
    signed_text = f"{body}:{channel_id}:{ts}".encode("utf-8")
    message_plaintext = json.dumps(
        {"body": body, "sig": b64(key.sign(signed_text, pss(), hashes.SHA256()))}, ensure_ascii=False
    ).encode("utf-8")
    message_key = os.urandom(32)
    message_iv = os.urandom(12)
    message = {
        "channel_id": channel_id,
        "ts": ts,
        "body": body,
        "key_b64": b64(message_key),
        "iv_b64": b64(message_iv),
        "ciphertext_b64": b64(AESGCM(message_key).encrypt(message_iv, message_plaintext, None)),
    }

    secret = os.urandom(32)
    challenge = {
        "ciphertext_b64": b64(public.encrypt(secret, oaep())),
        "answer": b64(hashlib.sha256(b"parley.challenge.v1:" + secret).digest()),
    }

    key_record = {"key_b64": b64(channel_key), "digest": b64(hashlib.sha256(channel_key).digest())}

    other_sizes = []
    for bits in (3072, 4096):
        other = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        other_der = spki(other.public_key())
        other_message = f"parley {bits}-bit signature".encode("utf-8")
        other_sizes.append({
            "bits": bits,
            "spki_der_b64": b64(other_der),
            "fingerprint_b64": b64(hashlib.sha256(other_der).digest()),
            "message_b64": b64(other_message),
            "signature_b64": b64(other.sign(other_message, pss(), hashes.SHA256())),
        })

    ec_key = ec.generate_private_key(ec.SECP256R1())
    small_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    e3_key = rsa.generate_private_key(public_exponent=3, key_size=2048)
    small_key_2048 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    invalid_keys = [
        {"name": "EC P-256", "error": "notRSA", "spki_der_b64": b64(spki(ec_key.public_key()))},
        {"name": "RSA-PSS restricted", "error": "notRSA", "spki_der_b64": b64(rsa_pss_spki(public))},
        {"name": "RSA 1024", "error": "unsupportedKeySize", "spki_der_b64": b64(spki(small_key.public_key()))},
        {"name": "RSA 2048 e=3", "error": "unsupportedExponent", "spki_der_b64": b64(spki(e3_key.public_key()))},
    ]

    def pem(private_key, private_format=serialization.PrivateFormat.PKCS8) -> str:
        return private_key.private_bytes(
            serialization.Encoding.PEM, private_format, serialization.NoEncryption()
        ).decode("ascii")

    invalid_private_keys = [
        {"name": "EC P-256 PKCS#8", "error": "notRSA", "pem": pem(ec_key)},
        {"name": "RSA 1024 PKCS#8", "error": "unsupportedKeySize", "pem": pem(small_key)},
        {"name": "RSA 2048 e=3 PKCS#8", "error": "unsupportedExponent", "pem": pem(e3_key)},
        {"name": "RSA 2048 with an inconsistent private exponent", "error": "invalidKey",
         "pem": mismatched_pkcs8_pem(small_key_2048)},
        {"name": "traditional RSA PRIVATE KEY", "error": "invalidKey",
         "pem": pem(key, serialization.PrivateFormat.TraditionalOpenSSL)},
    ]

    fixture = {
        "generator": f"Tests/Interop/make_fixtures.py, Python {sys.version.split()[0]}, cryptography {cryptography.__version__}",
        "rsa2048": {
            "modulus_bits": 2048,
            "private_pkcs8_pem": plain_pem,
            "private_pkcs8_pem_encrypted": encrypted_pem,
            "passphrase": PASSPHRASE,
            "spki_der_b64": b64(public_der),
            "fingerprint_b64": b64(hashlib.sha256(public_der).digest()),
        },
        "oaep": oaep_cases,
        "pss": pss_cases,
        "gcm": gcm_cases,
        "message": message,
        "challenge": challenge,
        "key_record": key_record,
        "other_sizes": other_sizes,
        "invalid_keys": invalid_keys,
        "invalid_private_keys": invalid_private_keys,
    }
    os.makedirs(os.path.dirname(OUTPUT), exist_ok=True)
    with open(OUTPUT, "w", encoding="utf-8") as f:
        json.dump(fixture, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {os.path.relpath(OUTPUT)}")


if __name__ == "__main__":
    main()
