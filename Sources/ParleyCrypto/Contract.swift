/// The answer to a login or signup challenge (wire protocol §4).
public enum ChallengeAnswer {
    /// The 20 ASCII bytes that precede the secret in the hashed text.
    static let prefix: [UInt8] = Array("parley.challenge.v1:".utf8)

    /// base64 of SHA-256(`parley.challenge.v1:` followed by the decrypted secret).
    ///
    /// Throws `.invalidLength` unless `secret` is exactly 32 bytes: a client must refuse to
    /// answer anything else, so the relay cannot use logins as a decryption oracle.
    public static func compute(secret: [UInt8]) throws -> String {
        guard secret.count == 32 else { throw CryptoError.invalidLength("challenge secret must be 32 bytes") }
        return Base64.encode(SHA256.hash(prefix + secret))
    }
}

/// The `digest` of a channel key record (wire protocol §6).
public enum KeyDigest {
    /// base64 of SHA-256 of the raw 32-byte key.
    public static func of(_ key: SymmetricKey) -> String {
        Base64.encode(SHA256.hash(key.bytes))
    }
}
