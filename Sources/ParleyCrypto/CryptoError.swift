internal import COpenSSL

/// Every failure of ParleyCrypto. Nothing in this module traps on bad input: it throws one of these.
///
/// The associated strings name what was wrong (a field, a length rule, an OpenSSL reason);
/// they never carry key material, plaintext or passphrases, so errors are safe to log.
public enum CryptoError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The bytes or text do not decode as the expected kind of key (DER, PEM, PKCS#8 structure).
    case invalidKey(String)
    /// The key decodes but is not a plain RSA key (for example EC, or RSA-PSS-restricted).
    case notRSA
    /// The RSA modulus has this many bits; only 2048, 3072 and 4096 are accepted.
    case unsupportedKeySize(Int)
    /// The RSA public exponent is not 65537.
    case unsupportedExponent
    /// An encrypted private key could not be decrypted with the given passphrase.
    case wrongPassphrase
    /// The private key is encrypted and no passphrase was given.
    case passphraseRequired
    /// An input has a length the operation does not accept; the string names the input and the rule.
    case invalidLength(String)
    /// RSA-OAEP decryption failed (wrong key, wrong label or tampered ciphertext).
    case decryptionFailed
    /// AES-GCM authentication failed: wrong key, or the IV, ciphertext or tag was changed.
    case authenticationFailed
    /// The text is not strict base64 (or base64url) of the expected flavour.
    /// An OpenSSL call failed unexpectedly; `detail` is OpenSSL's error queue (codes and reasons only).
    case openssl(function: String, detail: String)

    /// A fixed sentence per case, safe to log.
    public var description: String {
        switch self {
        case .invalidKey(let why): return "invalid key: \(why)"
        case .notRSA: return "key is not an RSA key"
        case .unsupportedKeySize(let bits): return "unsupported RSA key size: \(bits) bits (2048, 3072 or 4096 required)"
        case .unsupportedExponent: return "unsupported RSA public exponent (65537 required)"
        case .wrongPassphrase: return "wrong passphrase for encrypted private key"
        case .passphraseRequired: return "private key is encrypted and no passphrase was given"
        case .invalidLength(let what): return "invalid length: \(what)"
        case .decryptionFailed: return "RSA-OAEP decryption failed"
        case .authenticationFailed: return "AES-GCM authentication failed"
        case .openssl(let function, let detail): return "OpenSSL \(function) failed: \(detail)"
        }
    }
}

extension CryptoError {
    /// Builds `.openssl` for a failed call, draining this thread's OpenSSL error queue into the detail.
    static func openssl(_ function: String) -> CryptoError {
        .openssl(function: function, detail: OpenSSLErrorQueue.drain())
    }
}

/// OpenSSL keeps a per-thread queue of errors. Every failure path either drains it into a
/// `CryptoError.openssl` or clears it, so that stale entries never show up in a later error.
enum OpenSSLErrorQueue {
    static func drain() -> String {
        var reasons: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            // Bounded: a runaway queue must not produce an unbounded message.
            if reasons.count < 8 { reasons.append(reason(code)) }
        }
        return reasons.isEmpty ? "no OpenSSL error recorded" : reasons.joined(separator: "; ")
    }

    static func clear() {
        ERR_clear_error()
    }

    private static func reason(_ code: UInt) -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        buffer.withUnsafeMutableBufferPointer { pointer in
            ERR_error_string_n(code, pointer.baseAddress, pointer.count)
        }
        let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        return String(decoding: bytes, as: UTF8.self)
    }
}
