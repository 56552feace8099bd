internal import COpenSSL

/// A 256-bit AES key (a channel key). Always exactly 32 bytes.
///
/// `description` never shows the bytes, so a key that ends up in a log line stays secret.
public struct SymmetricKey: Sendable, Equatable, CustomStringConvertible {
    /// Number of bytes in a key.
    public static let byteCount = 32

    /// The raw key bytes.
    public let bytes: [UInt8]

    /// Wraps existing key bytes; throws `.invalidLength` unless there are exactly 32.
    public init(bytes: [UInt8]) throws {
        guard bytes.count == Self.byteCount else {
            throw CryptoError.invalidLength("AES-256 key must be \(Self.byteCount) bytes")
        }
        self.bytes = bytes
    }

    /// A fresh random key.
    public static func generate() throws -> SymmetricKey {
        try SymmetricKey(bytes: SecureRandom.bytes(count: byteCount))
    }

    /// Compares in constant time.
    public static func == (lhs: SymmetricKey, rhs: SymmetricKey) -> Bool {
        ConstantTime.equals(lhs.bytes, rhs.bytes)
    }

    /// Shows the size only, never the bytes.
    public var description: String { "SymmetricKey(\(Self.byteCount) bytes)" }
}

/// AES-256-GCM with a 96-bit IV, a 128-bit tag appended to the ciphertext (the WebCrypto
/// layout) and no additional data — the message encryption of the Parley contract.
public enum AESGCM {
    /// Number of bytes in an IV.
    public static let ivByteCount = 12
    /// Number of bytes in the authentication tag.
    public static let tagByteCount = 16

    /// An IV and the ciphertext with its tag appended.
    public struct SealedBox: Sendable, Equatable {
        /// The 12-byte IV.
        public let iv: [UInt8]
        /// Ciphertext followed by the 16-byte tag; at least 16 bytes.
        public let ciphertext: [UInt8]

        /// Validates the sizes: `iv` exactly 12 bytes, `ciphertext` (tag included) at least 16.
        public init(iv: [UInt8], ciphertext: [UInt8]) throws {
            guard iv.count == AESGCM.ivByteCount else {
                throw CryptoError.invalidLength("AES-GCM IV must be \(AESGCM.ivByteCount) bytes")
            }
            guard ciphertext.count >= AESGCM.tagByteCount else {
                throw CryptoError.invalidLength("AES-GCM ciphertext must include the \(AESGCM.tagByteCount)-byte tag")
            }
            self.iv = iv
            self.ciphertext = ciphertext
        }
    }

    /// Encrypts and authenticates `plaintext`.
    ///
    /// - Parameter iv: leave `nil` to get a fresh random IV (the normal case). Give one only
    ///   when you track IVs yourself: an IV must never be used twice under one key.
    public static func seal(_ plaintext: [UInt8], using key: SymmetricKey, iv: [UInt8]? = nil) throws -> SealedBox {
        let iv = try iv ?? SecureRandom.bytes(count: ivByteCount)
        guard iv.count == ivByteCount else {
            throw CryptoError.invalidLength("AES-GCM IV must be \(ivByteCount) bytes")
        }
        let length = try int32Length(plaintext.count, "AES-GCM plaintext")

        guard let context = EVP_CIPHER_CTX_new() else { throw CryptoError.openssl("EVP_CIPHER_CTX_new") }
        defer { EVP_CIPHER_CTX_free(context) }
        try check(EVP_EncryptInit_ex(context, EVP_aes_256_gcm(), nil, key.bytes, iv), "EVP_EncryptInit_ex")

        var output = [UInt8](repeating: 0, count: plaintext.count + tagByteCount)
        var written: Int32 = 0
        var finalWritten: Int32 = 0
        try output.withUnsafeMutableBufferPointer { out in
            guard let base = out.baseAddress else { return }
            try withNonNullBytes(plaintext) { input, _ in
                try check(EVP_EncryptUpdate(context, base, &written, input, length), "EVP_EncryptUpdate")
            }
            // GCM is a stream mode: Final emits nothing, but it must run to compute the tag.
            try check(EVP_EncryptFinal_ex(context, base + Int(written), &finalWritten), "EVP_EncryptFinal_ex")
            try check(
                EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_GCM_GET_TAG, Int32(tagByteCount), base + plaintext.count),
                "EVP_CIPHER_CTX_ctrl(GET_TAG)"
            )
        }
        guard Int(written) + Int(finalWritten) == plaintext.count else {
            throw CryptoError.openssl(function: "EVP_EncryptUpdate", detail: "unexpected output length")
        }
        return try SealedBox(iv: iv, ciphertext: output)
    }

    /// Checks the tag and decrypts. Throws `.authenticationFailed` when the key is wrong or
    /// anything in the box was changed; no plaintext is returned unless the tag verifies.
    public static func open(_ box: SealedBox, using key: SymmetricKey) throws -> [UInt8] {
        let bodyCount = box.ciphertext.count - tagByteCount
        let length = try int32Length(bodyCount, "AES-GCM ciphertext")
        var tag = Array(box.ciphertext[bodyCount...])
        let body = Array(box.ciphertext[..<bodyCount])

        guard let context = EVP_CIPHER_CTX_new() else { throw CryptoError.openssl("EVP_CIPHER_CTX_new") }
        defer { EVP_CIPHER_CTX_free(context) }
        try check(EVP_DecryptInit_ex(context, EVP_aes_256_gcm(), nil, key.bytes, box.iv), "EVP_DecryptInit_ex")

        // One spare byte so the output pointer is never null, even for an empty plaintext.
        var plaintext = [UInt8](repeating: 0, count: bodyCount + 1)
        var written: Int32 = 0
        var finalWritten: Int32 = 0
        let verified = try plaintext.withUnsafeMutableBufferPointer { out -> Bool in
            guard let base = out.baseAddress else { return false }
            try withNonNullBytes(body) { input, _ in
                try check(EVP_DecryptUpdate(context, base, &written, input, length), "EVP_DecryptUpdate")
            }
            try check(
                tag.withUnsafeMutableBytes {
                    EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_GCM_SET_TAG, Int32(tagByteCount), $0.baseAddress)
                },
                "EVP_CIPHER_CTX_ctrl(SET_TAG)"
            )
            return EVP_DecryptFinal_ex(context, base + Int(written), &finalWritten) > 0
        }
        guard verified else {
            OPENSSL_cleanse(&plaintext, plaintext.count)
            OpenSSLErrorQueue.clear()
            throw CryptoError.authenticationFailed
        }
        guard Int(written) + Int(finalWritten) == bodyCount else {
            throw CryptoError.openssl(function: "EVP_DecryptUpdate", detail: "unexpected output length")
        }
        plaintext.removeLast()
        return plaintext
    }
}
