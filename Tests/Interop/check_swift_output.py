#!/usr/bin/env python3
"""Check values made by the Swift ParleyCrypto module with an independent implementation
(Python `cryptography`). Run by the Swift test InteropTests.testPythonAcceptsSwiftOutput:

    python3 Tests/Interop/check_swift_output.py <swift-output.json>

Exits 0 when everything decrypts and verifies; otherwise prints every failure to stderr and
exits 1 (2 when the input or the environment is unusable).
"""

import base64
import binascii
import hashlib
import json
import os
import sys

try:
    from cryptography.exceptions import InvalidSignature, InvalidTag
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError as error:  # the Swift test reports this as a failure, never a skip
    print(f"check_swift_output.py: the Python 'cryptography' package is missing: {error}", file=sys.stderr)
    sys.exit(2)

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "Fixtures", "interop.json")

failures = []


def fail(what: str) -> None:
    failures.append(what)


def b64(text: str) -> bytes:
    """Strict standard base64, as the contract requires."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"not strict base64: {text[:40]!r}: {error}")


def oaep() -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=b"parley")


def pss(salt_length: int = 222) -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=salt_length)


def check(label: str, function) -> None:
    try:
        function()
    except Exception as error:  # every failure is collected, not just the first
        fail(f"{label}: {type(error).__name__}: {error}")


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: check_swift_output.py <swift-output.json>", file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as f:
        out = json.load(f)
    with open(FIXTURE, encoding="utf-8") as f:
        fixture = json.load(f)
    python_key = serialization.load_pem_private_key(fixture["rsa2048"]["private_pkcs8_pem"].encode(), password=None)

    spki_der = b64(out["spki_der_b64"])
    swift_public = serialization.load_der_public_key(spki_der)

    def public_key_shape():
        if not isinstance(swift_public, rsa.RSAPublicKey):
            raise ValueError("SPKI is not an RSA public key")
        numbers = swift_public.public_numbers()
        if swift_public.key_size != out["modulus_bits"] or numbers.e != 65537:
            raise ValueError(f"key size {swift_public.key_size}, exponent {numbers.e}")
        canonical = swift_public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if canonical != spki_der:
            raise ValueError("SPKI is not the canonical DER encoding")
        if b64(out["fingerprint_b64"]) != hashlib.sha256(spki_der).digest():
            raise ValueError("fingerprint is not SHA-256 of the SPKI DER")
    check("Swift public key", public_key_shape)

    swift_private = None

    def load_plain_pem():
        nonlocal swift_private
        swift_private = serialization.load_pem_private_key(out["private_pkcs8_pem"].encode(), password=None)
        if not out["private_pkcs8_pem"].startswith("-----BEGIN PRIVATE KEY-----"):
            raise ValueError("unencrypted key is not PKCS#8 'PRIVATE KEY' PEM")
        if swift_private.public_key().public_numbers() != swift_public.public_numbers():
            raise ValueError("PEM private key does not match the SPKI")
    check("Swift PKCS#8 PEM", load_plain_pem)

    def load_encrypted_pem():
        pem = out["private_pkcs8_pem_encrypted"]
        if not pem.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----"):
            raise ValueError("encrypted key is not PKCS#8 'ENCRYPTED PRIVATE KEY' PEM")
        decrypted = serialization.load_pem_private_key(pem.encode(), password=out["passphrase"].encode("utf-8"))
        if decrypted.public_key().public_numbers() != swift_public.public_numbers():
            raise ValueError("encrypted PEM holds another key")
        try:
            serialization.load_pem_private_key(pem.encode(), password=b"wrong passphrase")
        except ValueError:
            return
        raise ValueError("encrypted PEM opened with a wrong passphrase")
    check("Swift encrypted PKCS#8 PEM", load_encrypted_pem)

    for case in out["oaep_to_python"]:
        def unwrap_python(case=case):
            if python_key.decrypt(b64(case["ciphertext_b64"]), oaep()) != b64(case["plaintext_b64"]):
                raise ValueError("plaintext differs")
        check(f"OAEP to the Python key ({case['name']})", unwrap_python)

    for case in out["oaep_to_swift"]:
        def unwrap_swift(case=case):
            if swift_private is None:
                raise ValueError("no Swift private key to decrypt with")
            if swift_private.decrypt(b64(case["ciphertext_b64"]), oaep()) != b64(case["plaintext_b64"]):
                raise ValueError("plaintext differs")
        check(f"OAEP to the Swift key ({case['name']})", unwrap_swift)

    for case in out["pss"]:
        def verify(case=case):
            message, signature = b64(case["message_b64"]), b64(case["signature_b64"])
            swift_public.verify(signature, message, pss(), hashes.SHA256())
            # Negative controls: the salt length is really 222, and a changed message fails.
            for bad_padding, bad_message in ((pss(32), message), (pss(), message + b"!")):
                try:
                    swift_public.verify(signature, bad_message, bad_padding, hashes.SHA256())
                except InvalidSignature:
                    continue
                raise ValueError("signature also verifies where it must not")
        check(f"PSS signature ({case['name']})", verify)

    for case in out["gcm"]:
        def open_box(case=case):
            key, iv = b64(case["key_b64"]), b64(case["iv_b64"])
            if len(key) != 32 or len(iv) != 12:
                raise ValueError(f"key {len(key)} bytes, IV {len(iv)} bytes")
            if AESGCM(key).decrypt(iv, b64(case["ciphertext_b64"]), None) != b64(case["plaintext_b64"]):
                raise ValueError("plaintext differs")
        check(f"AES-GCM box ({case['name']})", open_box)

    def message():
        m = out["message"]
        try:
            plaintext = AESGCM(b64(m["key_b64"])).decrypt(b64(m["iv_b64"]), b64(m["ciphertext_b64"]), None)
        except InvalidTag:
            raise ValueError("message does not decrypt")
        inner = json.loads(plaintext.decode("utf-8"))
        if inner["body"] != m["body"]:
            raise ValueError("body differs")
        text = f"{inner['body']}:{m['channel_id']}:{m['ts']}".encode("utf-8")
        swift_public.verify(b64(inner["sig"]), text, pss(), hashes.SHA256())
    check("signed message", message)

    def challenge():
        c = out["challenge"]
        expected = base64.b64encode(hashlib.sha256(b"parley.challenge.v1:" + b64(c["secret_b64"])).digest()).decode()
        if c["answer"] != expected:
            raise ValueError(f"answer {c['answer']} != {expected}")
    check("challenge answer", challenge)

    def key_digest():
        k = out["key_record"]
        expected = base64.b64encode(hashlib.sha256(b64(k["key_b64"])).digest()).decode()
        if k["digest"] != expected:
            raise ValueError(f"digest {k['digest']} != {expected}")
    check("key record digest", key_digest)

    for case in out["base64url"]:
        def url(case=case):
            expected = base64.urlsafe_b64encode(b64(case["bytes_b64"])).decode().rstrip("=")
            if case["encoded"] != expected:
                raise ValueError(f"{case['encoded']!r} != {expected!r}")
        check("base64url", url)

    counts = {k: len(out[k]) for k in ("oaep_to_python", "oaep_to_swift", "pss", "gcm", "base64url")}
    if min(counts.values()) == 0:
        fail(f"an empty section in the Swift output: {counts}")
    if failures:
        for failure in failures:
            print(f"FAIL {failure}", file=sys.stderr)
        return 1
    print(f"ok: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
