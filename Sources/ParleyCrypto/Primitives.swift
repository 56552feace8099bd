internal import COpenSSL

/// SHA-256 (FIPS 180-4).
public enum SHA256 {
    /// Number of bytes in a SHA-256 digest.
    public static let byteCount = 32

    /// Returns the 32-byte SHA-256 digest of `data`.
    ///
    /// Precondition: OpenSSL can allocate a digest context and has its default provider.
    /// `EVP_Digest` fails only then (there is no invalid input), so a failure is an
    /// environment fault on the order of running out of memory, and it traps.
    public static func hash(_ data: [UInt8]) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: byteCount)
        var length: UInt32 = 0
        let ok = withNonNullBytes(data) { input, count in
            digest.withUnsafeMutableBufferPointer { out in
                EVP_Digest(input, count, out.baseAddress, &length, EVP_sha256(), nil)
            }
        }
        guard ok == 1, length == UInt32(byteCount) else {
            // Unreachable on valid input: see the precondition above.
            preconditionFailure("EVP_Digest(SHA-256) failed: \(OpenSSLErrorQueue.drain())")
        }
        return digest
    }
}

/// Cryptographically secure random bytes from OpenSSL's DRBG.
public enum SecureRandom {
    /// Returns `count` random bytes. Throws when `count` is negative or the generator fails
    /// (for example when it cannot be seeded).
    public static func bytes(count: Int) throws -> [UInt8] {
        guard count >= 0 else { throw CryptoError.invalidLength("random byte count is negative") }
        let length = try int32Length(count, "random byte count")
        var bytes = [UInt8](repeating: 0, count: count)
        if count == 0 { return bytes }
        let result = bytes.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress, length) }
        try check(result, "RAND_bytes")
        return bytes
    }
}

/// Comparisons whose running time does not depend on where the inputs differ.
public enum ConstantTime {
    /// True when `a` and `b` hold the same bytes. Inputs of different lengths are unequal
    /// (the lengths themselves are not secret here: tags, hashes and keys have fixed sizes).
    public static func equals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        return withNonNullBytes(a) { pa, count in
            withNonNullBytes(b) { pb, _ in CRYPTO_memcmp(pa, pb, count) == 0 }
        }
    }
}
