// ParleyCrypto: the cryptography of the Parley contract (wire protocol §2), on OpenSSL 3 EVP.
//
// - RSAPublicKey / RSAPrivateKey: account keys; RSA-OAEP wrapping and RSA-PSS signatures with
//   the contract's fixed parameters, SPKI DER and PKCS#8 PEM coding.
// - SymmetricKey / AESGCM: channel keys and message encryption.
// - SHA256, SecureRandom, ConstantTime, Base64: the small pieces around them.
// - ChallengeAnswer, KeyDigest: two contract formulas that are pure crypto.
//
// Every bad input throws a CryptoError; no C type appears in the public API.
