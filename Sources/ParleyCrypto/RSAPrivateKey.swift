internal import COpenSSL

/// An account private key: RSA, modulus 2048, 3072 or 4096 bits, exponent 65537.
///
/// It unwraps (RSA-OAEP) and signs (RSA-PSS) with the contract's fixed parameters, and is
/// stored as PKCS#8 PEM, encrypted with a passphrase when one is given. Never log it.
///
/// Immutable after `init`, hence `@unchecked Sendable`: OpenSSL 3 allows concurrent read-only
/// use of one `EVP_PKEY` as long as each operation has its own context, which every method
/// here creates and frees.
public final class RSAPrivateKey: @unchecked Sendable {
    /// Owned: freed in `deinit`.
    private let key: OpaquePointer

    /// The matching public key.
    public let publicKey: RSAPublicKey

    /// Takes ownership of `key`, validating it first; frees it when validation fails.
    private init(adopting key: OpaquePointer, checkPair: Bool) throws {
        do {
            _ = try RSAKeyCoding.validate(key)
            if checkPair { try Self.checkKeyPair(key) }
            self.publicKey = try RSAPublicKey(spkiDER: RSAKeyCoding.encodeSPKI(key))
        } catch {
            EVP_PKEY_free(key)
            throw error
        }
        self.key = key
    }

    deinit { EVP_PKEY_free(key) }

    /// Generates a new key pair with public exponent 65537.
    public convenience init(generating size: RSAKeySize = .bits2048) throws {
        guard let context = EVP_PKEY_CTX_new_from_name(nil, "RSA", nil) else {
            throw CryptoError.openssl("EVP_PKEY_CTX_new_from_name")
        }
        defer { EVP_PKEY_CTX_free(context) }
        try check(EVP_PKEY_keygen_init(context), "EVP_PKEY_keygen_init")
        // The default public exponent is 65537; `validate` confirms it.
        try check(EVP_PKEY_CTX_set_rsa_keygen_bits(context, Int32(size.rawValue)), "EVP_PKEY_CTX_set_rsa_keygen_bits")
        var generated: OpaquePointer?
        try check(EVP_PKEY_generate(context, &generated), "EVP_PKEY_generate")
        guard let generated else { throw CryptoError.openssl("EVP_PKEY_generate") }
        try self.init(adopting: generated, checkPair: false)
    }

    /// Reads a PKCS#8 PEM private key: `-----BEGIN PRIVATE KEY-----`, or
    /// `-----BEGIN ENCRYPTED PRIVATE KEY-----` with `passphrase`.
    ///
    /// OpenSSL is never allowed to prompt on a terminal. Throws `.passphraseRequired` for an
    /// encrypted key without a passphrase, `.wrongPassphrase` when decryption fails,
    /// `.invalidKey` for other PEM types (including traditional `RSA PRIVATE KEY`) or malformed
    /// contents, and the same errors as `RSAPublicKey` for keys outside the contract. A
    /// passphrase given for an unencrypted key is ignored.
    public convenience init(pkcs8PEM: String, passphrase: String? = nil) throws {
        let key = try PKCS8.read(pem: pkcs8PEM, passphrase: passphrase)
        try self.init(adopting: key, checkPair: true)
    }

    /// Writes the key as PKCS#8 PEM. With a passphrase the key is encrypted
    /// (`ENCRYPTED PRIVATE KEY`: PBES2, PBKDF2-HMAC-SHA256, AES-256-CBC, OpenSSL's defaults);
    /// without one it is written in the clear (`PRIVATE KEY`).
    ///
    /// Throws `.invalidLength` for an empty passphrase or one longer than 1024 UTF-8 bytes.
    public func pkcs8PEM(passphrase: String? = nil) throws -> String {
        try PKCS8.write(key, passphrase: passphrase)
    }

    /// Decrypts an RSA-OAEP ciphertext made by `RSAPublicKey.wrap` (or any contract client).
    ///
    /// Throws `.invalidLength` unless the ciphertext is exactly `publicKey.modulusBytes` long,
    /// and `.decryptionFailed` when it does not decrypt under this key and label.
    public func unwrap(_ ciphertext: [UInt8]) throws -> [UInt8] {
        guard ciphertext.count == publicKey.modulusBytes else {
            throw CryptoError.invalidLength("RSA-OAEP ciphertext must be \(publicKey.modulusBytes) bytes for this key")
        }
        let context = try RSAOperation.oaepContext(key, encrypting: false)
        defer { EVP_PKEY_CTX_free(context) }

        var plaintext = [UInt8](repeating: 0, count: publicKey.modulusBytes)
        var length = plaintext.count
        let result = ciphertext.withUnsafeBufferPointer { input in
            plaintext.withUnsafeMutableBufferPointer {
                EVP_PKEY_decrypt(context, $0.baseAddress, &length, input.baseAddress, input.count)
            }
        }
        guard result > 0, length <= plaintext.count else {
            OPENSSL_cleanse(&plaintext, plaintext.count)
            OpenSSLErrorQueue.clear()
            throw CryptoError.decryptionFailed
        }
        let unwrapped = Array(plaintext[..<length])
        OPENSSL_cleanse(&plaintext, plaintext.count)
        return unwrapped
    }

    /// Signs `message` with RSA-PSS (SHA-256, MGF1-SHA-256, 222-byte salt); the signature is
    /// `publicKey.modulusBytes` long.
    public func signature(for message: [UInt8]) throws -> [UInt8] {
        guard let context = EVP_MD_CTX_new() else { throw CryptoError.openssl("EVP_MD_CTX_new") }
        defer { EVP_MD_CTX_free(context) }

        // The key context belongs to `context` and is freed with it.
        var keyContext: OpaquePointer?
        try check(EVP_DigestSignInit(context, &keyContext, EVP_sha256(), nil, key), "EVP_DigestSignInit")
        guard let keyContext, RSAOperation.configurePSS(keyContext) else {
            throw CryptoError.openssl("EVP_PKEY_CTX_set_rsa_pss_saltlen")
        }
        var signature = [UInt8](repeating: 0, count: publicKey.modulusBytes)
        var length = signature.count
        let result = withNonNullBytes(message) { input, count in
            signature.withUnsafeMutableBufferPointer { EVP_DigestSign(context, $0.baseAddress, &length, input, count) }
        }
        try check(result, "EVP_DigestSign")
        guard length == signature.count else {
            throw CryptoError.openssl(function: "EVP_DigestSign", detail: "unexpected signature length")
        }
        return signature
    }

    /// Confirms that the private and public halves of an imported key belong together, so a
    /// corrupted file fails here rather than producing signatures nobody can verify.
    private static func checkKeyPair(_ key: OpaquePointer) throws {
        guard let context = EVP_PKEY_CTX_new_from_pkey(nil, key, nil) else {
            throw CryptoError.openssl("EVP_PKEY_CTX_new_from_pkey")
        }
        defer { EVP_PKEY_CTX_free(context) }
        guard EVP_PKEY_pairwise_check(context) == 1 else {
            OpenSSLErrorQueue.clear()
            throw CryptoError.invalidKey("private key does not match its public key")
        }
    }
}

/// PKCS#8 PEM reading and writing without any terminal prompt.
private enum PKCS8 {
    static let plainLabel = "PRIVATE KEY"
    static let encryptedLabel = "ENCRYPTED PRIVATE KEY"

    /// PEM_BUFSIZE: the buffer OpenSSL hands to the passphrase callback when reading.
    static let maximumPassphraseLength = Int(PEM_BUFSIZE)

    static func passphraseBytes(_ passphrase: String) throws -> [UInt8] {
        let bytes = Array(passphrase.utf8)
        guard (1...maximumPassphraseLength).contains(bytes.count) else {
            throw CryptoError.invalidLength("passphrase must be 1...\(maximumPassphraseLength) UTF-8 bytes")
        }
        return bytes
    }

    /// Decodes the first PEM block; the caller owns (frees) the returned `EVP_PKEY`.
    static func read(pem: String, passphrase: String?) throws -> OpaquePointer {
        let text = Array(pem.utf8)
        let textLength = try int32Length(text.count, "PEM text")
        return try withNonNullBytes(text) { base, _ in
            guard let bio = BIO_new_mem_buf(base, textLength) else { throw CryptoError.openssl("BIO_new_mem_buf") }
            defer { BIO_free(bio) }

            var name: UnsafeMutablePointer<CChar>?
            var header: UnsafeMutablePointer<CChar>?
            var data: UnsafeMutablePointer<UInt8>?
            var dataLength = 0
            let found = PEM_read_bio(bio, &name, &header, &data, &dataLength)
            defer {
                if let data { OPENSSL_cleanse(data, dataLength) }
                parley_openssl_free(name)
                parley_openssl_free(header)
                parley_openssl_free(data)
            }
            guard found == 1, let name, let data else {
                OpenSSLErrorQueue.clear()
                throw CryptoError.invalidKey("no PEM block found")
            }
            // PKCS#8 PEM has no headers; Proc-Type/DEK-Info belong to the legacy formats.
            if let header, header.pointee != 0 {
                throw CryptoError.invalidKey("unexpected PEM headers")
            }
            let der = UnsafeBufferPointer(start: data, count: dataLength)
            switch String(cString: name) {
            case plainLabel:
                return try decodePrivateKeyInfo(der)
            case encryptedLabel:
                guard let passphrase else { throw CryptoError.passphraseRequired }
                return try decodeEncryptedPrivateKeyInfo(der, passphrase: passphraseBytes(passphrase))
            default:
                throw CryptoError.invalidKey("PEM block is not PRIVATE KEY or ENCRYPTED PRIVATE KEY")
            }
        }
    }

    private static func decodePrivateKeyInfo(_ der: UnsafeBufferPointer<UInt8>) throws -> OpaquePointer {
        guard let start = der.baseAddress else { throw CryptoError.invalidKey("empty PKCS#8 structure") }
        var cursor: UnsafePointer<UInt8>? = UnsafePointer(start)
        guard let info = d2i_PKCS8_PRIV_KEY_INFO(nil, &cursor, der.count) else {
            OpenSSLErrorQueue.clear()
            throw CryptoError.invalidKey("malformed PKCS#8 PrivateKeyInfo")
        }
        defer { PKCS8_PRIV_KEY_INFO_free(info) }
        guard cursor == UnsafePointer(start + der.count) else {
            throw CryptoError.invalidKey("trailing bytes after the PKCS#8 PrivateKeyInfo")
        }
        guard let key = EVP_PKCS82PKEY(info) else {
            OpenSSLErrorQueue.clear()
            throw CryptoError.invalidKey("unsupported or malformed private key")
        }
        return key
    }

    private static func decodeEncryptedPrivateKeyInfo(
        _ der: UnsafeBufferPointer<UInt8>,
        passphrase: [UInt8]
    ) throws -> OpaquePointer {
        guard let start = der.baseAddress, let length = Int32(exactly: der.count) else {
            throw CryptoError.invalidKey("malformed PKCS#8 EncryptedPrivateKeyInfo")
        }
        // Check the outer structure first, so that garbage is `.invalidKey` and only a failed
        // decryption is `.wrongPassphrase`.
        var cursor: UnsafePointer<UInt8>? = UnsafePointer(start)
        guard let structure = d2i_X509_SIG(nil, &cursor, der.count) else {
            OpenSSLErrorQueue.clear()
            throw CryptoError.invalidKey("malformed PKCS#8 EncryptedPrivateKeyInfo")
        }
        X509_SIG_free(structure)
        guard cursor == UnsafePointer(start + der.count) else {
            throw CryptoError.invalidKey("trailing bytes after the PKCS#8 EncryptedPrivateKeyInfo")
        }

        guard let bio = BIO_new_mem_buf(start, length) else { throw CryptoError.openssl("BIO_new_mem_buf") }
        defer { BIO_free(bio) }
        var secret = passphrase
        defer { OPENSSL_cleanse(&secret, secret.count) }
        let key = secret.withUnsafeBytes { bytes -> OpaquePointer? in
            var source = bytes
            // An explicit callback: with none, OpenSSL would fall back to prompting on the tty.
            return withUnsafeMutablePointer(to: &source) { d2i_PKCS8PrivateKey_bio(bio, nil, passphraseCallback, $0) }
        }
        guard let key else {
            OpenSSLErrorQueue.clear()
            throw CryptoError.wrongPassphrase
        }
        return key
    }

    /// Hands OpenSSL the passphrase that `userdata` points to (an `UnsafeRawBufferPointer`).
    private static let passphraseCallback: @convention(c) (
        UnsafeMutablePointer<CChar>?, Int32, Int32, UnsafeMutableRawPointer?
    ) -> Int32 = { buffer, size, _, userdata in
        guard let buffer, let userdata else { return -1 }
        let source = userdata.load(as: UnsafeRawBufferPointer.self)
        guard let base = source.baseAddress, source.count <= Int(size) else { return -1 }
        UnsafeMutableRawPointer(buffer).copyMemory(from: base, byteCount: source.count)
        return Int32(source.count)
    }

    static func write(_ key: OpaquePointer, passphrase: String?) throws -> String {
        guard let bio = BIO_new(BIO_s_mem()) else { throw CryptoError.openssl("BIO_new") }
        // Freeing a memory BIO clears its buffer (BUF_MEM_free uses OPENSSL_clear_free).
        defer { BIO_free(bio) }

        let result: Int32
        if let passphrase {
            var secret = try passphraseBytes(passphrase)
            defer { OPENSSL_cleanse(&secret, secret.count) }
            let length = Int32(secret.count)
            // The passphrase is passed explicitly, so no callback (and no prompt) is involved.
            result = secret.withUnsafeBufferPointer { bytes in
                bytes.withMemoryRebound(to: CChar.self) {
                    PEM_write_bio_PKCS8PrivateKey(bio, key, EVP_aes_256_cbc(), $0.baseAddress, length, nil, nil)
                }
            }
        } else {
            result = PEM_write_bio_PKCS8PrivateKey(bio, key, nil, nil, 0, nil, nil)
        }
        try check(result, "PEM_write_bio_PKCS8PrivateKey")

        var contents: UnsafeMutablePointer<CChar>?
        // BIO_get_mem_data is a macro for this BIO_ctrl call.
        let count = BIO_ctrl(bio, BIO_CTRL_INFO, 0, &contents)
        guard count > 0, let contents else { throw CryptoError.openssl("BIO_get_mem_data") }
        return String(decoding: UnsafeRawBufferPointer(start: contents, count: count), as: UTF8.self)
    }
}
