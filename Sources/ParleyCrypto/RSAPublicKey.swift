internal import COpenSSL

/// The RSA modulus sizes Parley accepts.
public enum RSAKeySize: Int, Sendable, CaseIterable {
    /// 2048-bit modulus (256-byte ciphertexts and signatures); the default.
    case bits2048 = 2048
    /// 3072-bit modulus (384 bytes).
    case bits3072 = 3072
    /// 4096-bit modulus (512 bytes).
    case bits4096 = 4096
}

/// An account public key: RSA, modulus 2048, 3072 or 4096 bits, exponent 65537.
///
/// It wraps channel keys and challenges (RSA-OAEP, SHA-256, MGF1-SHA-256, label `parley`)
/// and verifies signatures (RSA-PSS, SHA-256, MGF1-SHA-256, 222-byte salt), the parameters
/// of the Parley contract; no other padding can be chosen.
///
/// Immutable after `init`, hence `@unchecked Sendable`: OpenSSL 3 allows concurrent read-only
/// use of one `EVP_PKEY` as long as each operation has its own `EVP_PKEY_CTX`, which every
/// method here creates and frees.
public final class RSAPublicKey: @unchecked Sendable, Equatable {
    /// Owned: freed in `deinit`.
    private let key: OpaquePointer

    /// The DER SubjectPublicKeyInfo (what WebCrypto `exportKey("spki")` returns).
    public let spkiDER: [UInt8]
    /// SHA-256 of `spkiDER`: what clients pin and show.
    public let fingerprint: [UInt8]
    /// Number of bits in the modulus: 2048, 3072 or 4096.
    public let modulusBits: Int

    /// Number of bytes in the modulus, which is also the length of every ciphertext and signature.
    public var modulusBytes: Int { (modulusBits + 7) / 8 }

    /// `fingerprint` in standard base64.
    public var fingerprintBase64: String { Base64.encode(fingerprint) }

    /// The longest plaintext `wrap` accepts: the modulus length minus 66 bytes of OAEP overhead.
    public var maximumWrapLength: Int { modulusBytes - 2 * SHA256.byteCount - 2 }

    /// Parses and validates a DER SubjectPublicKeyInfo.
    ///
    /// Throws `.invalidKey` when the bytes are not exactly one canonical DER SPKI (trailing
    /// bytes included), `.notRSA` for other algorithms (EC, RSA-PSS-restricted, …),
    /// `.unsupportedKeySize` and `.unsupportedExponent` for RSA keys outside the contract.
    public init(spkiDER: [UInt8]) throws {
        let key = try RSAKeyCoding.parseSPKI(spkiDER)
        do {
            self.modulusBits = try RSAKeyCoding.validate(key)
            // Only the canonical encoding is accepted, so each key has one fingerprint.
            guard try RSAKeyCoding.encodeSPKI(key) == spkiDER else {
                throw CryptoError.invalidKey("SubjectPublicKeyInfo is not in canonical DER")
            }
        } catch {
            EVP_PKEY_free(key)
            throw error
        }
        self.key = key
        self.spkiDER = spkiDER
        self.fingerprint = SHA256.hash(spkiDER)
    }

    deinit { EVP_PKEY_free(key) }

    /// Two public keys are equal when their SPKI encodings are.
    public static func == (lhs: RSAPublicKey, rhs: RSAPublicKey) -> Bool {
        lhs.spkiDER == rhs.spkiDER
    }

    /// Encrypts a short secret (a channel key, a challenge) with RSA-OAEP.
    ///
    /// The result is `modulusBytes` long. Throws `.invalidLength` when `plaintext` is longer
    /// than `maximumWrapLength`.
    public func wrap(_ plaintext: [UInt8]) throws -> [UInt8] {
        guard plaintext.count <= maximumWrapLength else {
            throw CryptoError.invalidLength("RSA-OAEP plaintext must be at most \(maximumWrapLength) bytes for this key")
        }
        let context = try RSAOperation.oaepContext(key, encrypting: true)
        defer { EVP_PKEY_CTX_free(context) }

        var ciphertext = [UInt8](repeating: 0, count: modulusBytes)
        var length = ciphertext.count
        let result = withNonNullBytes(plaintext) { input, count in
            ciphertext.withUnsafeMutableBufferPointer { EVP_PKEY_encrypt(context, $0.baseAddress, &length, input, count) }
        }
        try check(result, "EVP_PKEY_encrypt")
        guard length == modulusBytes else {
            throw CryptoError.openssl(function: "EVP_PKEY_encrypt", detail: "unexpected ciphertext length")
        }
        return ciphertext
    }

    /// True when `signature` is a valid RSA-PSS signature of `message` by this key.
    ///
    /// Any failure (wrong length, wrong key, other salt length, tampering) gives false.
    public func isValidSignature(_ signature: [UInt8], for message: [UInt8]) -> Bool {
        guard signature.count == modulusBytes else { return false }
        guard let context = EVP_MD_CTX_new() else {
            OpenSSLErrorQueue.clear()
            return false
        }
        defer { EVP_MD_CTX_free(context) }

        var keyContext: OpaquePointer?
        guard EVP_DigestVerifyInit(context, &keyContext, EVP_sha256(), nil, key) == 1,
              let keyContext, RSAOperation.configurePSS(keyContext)
        else {
            OpenSSLErrorQueue.clear()
            return false
        }
        let result = withNonNullBytes(signature) { sig, sigCount in
            withNonNullBytes(message) { msg, msgCount in EVP_DigestVerify(context, sig, sigCount, msg, msgCount) }
        }
        if result != 1 { OpenSSLErrorQueue.clear() }
        return result == 1
    }
}

/// The fixed RSA parameters of the contract and the contexts that apply them.
enum RSAOperation {
    /// The OAEP label: the 6 UTF-8 bytes `parley`.
    static let oaepLabel: [UInt8] = Array("parley".utf8)
    /// The PSS salt length; the largest a 2048-bit key allows with SHA-256, and WebCrypto's usual choice.
    static let pssSaltLength: Int32 = 222

    /// A new `EVP_PKEY_CTX` set up for RSA-OAEP encryption or decryption; the caller frees it.
    static func oaepContext(_ key: OpaquePointer, encrypting: Bool) throws -> OpaquePointer {
        guard let context = EVP_PKEY_CTX_new_from_pkey(nil, key, nil) else {
            throw CryptoError.openssl("EVP_PKEY_CTX_new_from_pkey")
        }
        do {
            if encrypting {
                try check(EVP_PKEY_encrypt_init(context), "EVP_PKEY_encrypt_init")
            } else {
                try check(EVP_PKEY_decrypt_init(context), "EVP_PKEY_decrypt_init")
            }
            try check(EVP_PKEY_CTX_set_rsa_padding(context, RSA_PKCS1_OAEP_PADDING), "EVP_PKEY_CTX_set_rsa_padding")
            try check(EVP_PKEY_CTX_set_rsa_oaep_md(context, EVP_sha256()), "EVP_PKEY_CTX_set_rsa_oaep_md")
            try check(EVP_PKEY_CTX_set_rsa_mgf1_md(context, EVP_sha256()), "EVP_PKEY_CTX_set_rsa_mgf1_md")

            // set0 takes ownership of an OPENSSL_malloc'd buffer, but only on success: on
            // failure OpenSSL 3.0 leaves it with the caller, so it is freed here.
            guard let label = parley_openssl_malloc(oaepLabel.count) else {
                throw CryptoError.openssl("OPENSSL_malloc")
            }
            label.copyMemory(from: oaepLabel, byteCount: oaepLabel.count)
            let result = EVP_PKEY_CTX_set0_rsa_oaep_label(context, label, Int32(oaepLabel.count))
            if result <= 0 {
                parley_openssl_free(label)
                throw CryptoError.openssl("EVP_PKEY_CTX_set0_rsa_oaep_label")
            }
        } catch {
            EVP_PKEY_CTX_free(context)
            throw error
        }
        return context
    }

    /// Applies PSS padding, MGF1-SHA-256 and the 222-byte salt to a DigestSign/DigestVerify context.
    static func configurePSS(_ keyContext: OpaquePointer) -> Bool {
        EVP_PKEY_CTX_set_rsa_padding(keyContext, RSA_PKCS1_PSS_PADDING) > 0
            && EVP_PKEY_CTX_set_rsa_pss_saltlen(keyContext, pssSaltLength) > 0
            && EVP_PKEY_CTX_set_rsa_mgf1_md(keyContext, EVP_sha256()) > 0
    }
}

/// DER/PEM coding and validation of RSA keys, shared by both key classes.
enum RSAKeyCoding {
    /// Parses exactly one DER SubjectPublicKeyInfo; the caller owns (frees) the result.
    static func parseSPKI(_ der: [UInt8]) throws -> OpaquePointer {
        guard !der.isEmpty else { throw CryptoError.invalidKey("empty SubjectPublicKeyInfo") }
        var consumed = 0
        let parsed: OpaquePointer? = der.withUnsafeBufferPointer { buffer in
            guard let start = buffer.baseAddress else { return nil }
            var cursor: UnsafePointer<UInt8>? = start
            let key = d2i_PUBKEY(nil, &cursor, buffer.count)
            if let cursor { consumed = cursor - start }
            return key
        }
        guard let key = parsed else {
            OpenSSLErrorQueue.clear()
            throw CryptoError.invalidKey("not a DER SubjectPublicKeyInfo")
        }
        guard consumed == der.count else {
            EVP_PKEY_free(key)
            throw CryptoError.invalidKey("trailing bytes after the SubjectPublicKeyInfo")
        }
        return key
    }

    /// The DER SubjectPublicKeyInfo of a key (public or private).
    static func encodeSPKI(_ key: OpaquePointer) throws -> [UInt8] {
        let length = i2d_PUBKEY(key, nil)
        guard length > 0 else { throw CryptoError.openssl("i2d_PUBKEY") }
        var der = [UInt8](repeating: 0, count: Int(length))
        let written = der.withUnsafeMutableBufferPointer { buffer -> Int32 in
            var cursor = buffer.baseAddress
            return i2d_PUBKEY(key, &cursor)
        }
        guard written == length else { throw CryptoError.openssl("i2d_PUBKEY") }
        return der
    }

    /// Checks the contract's rules (plain RSA, accepted size, e = 65537); returns the modulus bits.
    static func validate(_ key: OpaquePointer) throws -> Int {
        // EVP_PKEY_RSA is rsaEncryption only; RSA-PSS-restricted keys have their own id.
        guard EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA else { throw CryptoError.notRSA }
        let bits = Int(EVP_PKEY_get_bits(key))
        guard RSAKeySize(rawValue: bits) != nil else { throw CryptoError.unsupportedKeySize(bits) }
        // Reading e into a size_t fails when it does not fit, which also means it is not 65537.
        var exponent = 0
        guard EVP_PKEY_get_size_t_param(key, OSSL_PKEY_PARAM_RSA_E, &exponent) == 1 else {
            OpenSSLErrorQueue.clear()
            throw CryptoError.unsupportedExponent
        }
        guard exponent == 65537 else { throw CryptoError.unsupportedExponent }
        return bits
    }
}
