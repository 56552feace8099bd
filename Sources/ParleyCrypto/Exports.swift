// Base64 and base64url are part of the crypto API (fingerprints, digests and challenge
// answers are base64 on the wire); they live in ParleyEncoding so the protocol layer can
// share them without importing crypto.
@_exported import ParleyEncoding
