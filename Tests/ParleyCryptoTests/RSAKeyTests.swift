import ParleyCrypto
import XCTest

final class RSAKeyTests: XCTestCase {
    // MARK: Generation and SPKI

    func testGenerationForEachSizeRoundTripsThroughSPKI() throws {
        for size in RSAKeySize.allCases {
            let key = try RSAPrivateKey(generating: size)
            let publicKey = key.publicKey
            XCTAssertEqual(publicKey.modulusBits, size.rawValue)
            XCTAssertEqual(publicKey.modulusBytes, size.rawValue / 8)

            // Re-importing runs the full validation (RSA, size, e = 65537) on the exported DER.
            let imported = try RSAPublicKey(spkiDER: publicKey.spkiDER)
            XCTAssertEqual(imported, publicKey)
            XCTAssertEqual(imported.modulusBits, size.rawValue)
            XCTAssertEqual(imported.fingerprint, publicKey.fingerprint)

            let message = utf8("size \(size.rawValue)")
            let signature = try key.signature(for: message)
            XCTAssertEqual(signature.count, size.rawValue / 8)
            XCTAssertTrue(imported.isValidSignature(signature, for: message))

            let secret = try SecureRandom.bytes(count: 32)
            let wrapped = try imported.wrap(secret)
            XCTAssertEqual(wrapped.count, size.rawValue / 8)
            XCTAssertEqual(try key.unwrap(wrapped), secret)
        }
    }

    func testExponentIs65537InTheExportedDER() throws {
        let der = try SharedKeys.first.get().publicKey.spkiDER
        // RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER } ends with 02 03 01 00 01.
        XCTAssertEqual(Array(der.suffix(5)), [0x02, 0x03, 0x01, 0x00, 0x01])
    }

    func testFingerprintIsSHA256OfTheSPKIDER() throws {
        let publicKey = try SharedKeys.first.get().publicKey
        XCTAssertEqual(publicKey.fingerprint, SHA256.hash(publicKey.spkiDER))
        XCTAssertEqual(publicKey.fingerprint.count, 32)
        XCTAssertEqual(publicKey.fingerprintBase64, Base64.encode(SHA256.hash(publicKey.spkiDER)))
        XCTAssertNotEqual(publicKey.fingerprint, try SharedKeys.second.get().publicKey.fingerprint)
    }

    // MARK: PKCS#8 PEM

    func testPKCS8PEMRoundTripUnencrypted() throws {
        let key = try SharedKeys.first.get()
        let pem = try key.pkcs8PEM()
        XCTAssertTrue(pem.hasPrefix("-----BEGIN PRIVATE KEY-----\n"), pem.prefix(40).description)
        XCTAssertTrue(pem.hasSuffix("-----END PRIVATE KEY-----\n"))

        let imported = try RSAPrivateKey(pkcs8PEM: pem)
        XCTAssertEqual(imported.publicKey, key.publicKey)
        // The imported key really is the same private key: it opens and signs for the original.
        let secret = try SecureRandom.bytes(count: 32)
        XCTAssertEqual(try imported.unwrap(key.publicKey.wrap(secret)), secret)
        XCTAssertTrue(key.publicKey.isValidSignature(try imported.signature(for: [1, 2, 3]), for: [1, 2, 3]))
    }

    func testPKCS8PEMRoundTripWithPassphrase() throws {
        let key = try SharedKeys.first.get()
        let pem = try key.pkcs8PEM(passphrase: "tr0ub4dor & 3 ✓")
        XCTAssertTrue(pem.hasPrefix("-----BEGIN ENCRYPTED PRIVATE KEY-----\n"), pem.prefix(40).description)
        XCTAssertNotEqual(pem, try key.pkcs8PEM(passphrase: "tr0ub4dor & 3 ✓"), "salt and IV must be random")

        let imported = try RSAPrivateKey(pkcs8PEM: pem, passphrase: "tr0ub4dor & 3 ✓")
        XCTAssertEqual(imported.publicKey, key.publicKey)
        let secret = try SecureRandom.bytes(count: 32)
        XCTAssertEqual(try imported.unwrap(key.publicKey.wrap(secret)), secret)
    }

    func testWrongOrMissingPassphraseThrows() throws {
        let pem = try SharedKeys.first.get().pkcs8PEM(passphrase: "correct horse")
        assertThrows(try RSAPrivateKey(pkcs8PEM: pem, passphrase: "battery staple"), .wrongPassphrase)
        assertThrows(try RSAPrivateKey(pkcs8PEM: pem, passphrase: "correct horse "), .wrongPassphrase)
        // No passphrase must not prompt on the terminal: it throws at once.
        assertThrows(try RSAPrivateKey(pkcs8PEM: pem), .passphraseRequired)
        assertThrows(try RSAPrivateKey(pkcs8PEM: pem, passphrase: ""), "invalidLength")
    }

    func testPassphraseLengthLimits() throws {
        let key = try SharedKeys.first.get()
        assertThrows(try key.pkcs8PEM(passphrase: ""), "invalidLength")
        assertThrows(try key.pkcs8PEM(passphrase: String(repeating: "x", count: 1025)), "invalidLength")
        let longest = String(repeating: "x", count: 1024)
        let pem = try key.pkcs8PEM(passphrase: longest)
        XCTAssertEqual(try RSAPrivateKey(pkcs8PEM: pem, passphrase: longest).publicKey, key.publicKey)
    }

    func testPassphraseGivenForUnencryptedKeyIsIgnored() throws {
        let key = try SharedKeys.first.get()
        let imported = try RSAPrivateKey(pkcs8PEM: key.pkcs8PEM(), passphrase: "unused")
        XCTAssertEqual(imported.publicKey, key.publicKey)
    }

    func testGarbagePEMThrowsInvalidKey() throws {
        let key = try SharedKeys.first.get()
        let pem = try key.pkcs8PEM()
        let body = pem.split(separator: "\n").dropFirst().dropLast().joined(separator: "\n")
        let publicPEM = "-----BEGIN PUBLIC KEY-----\n\(Base64.encode(key.publicKey.spkiDER))\n-----END PUBLIC KEY-----\n"
        let cases: [(String, String)] = [
            ("empty", ""),
            ("not PEM", "hello, I am not a key"),
            ("body without armour", body),
            ("public key PEM", publicPEM),
            ("bad base64 body", "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n"),
            ("not DER inside", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            ("truncated", String(pem.prefix(pem.count / 2))),
            ("encrypted label, plain body", pem.replacingOccurrences(of: "PRIVATE KEY", with: "ENCRYPTED PRIVATE KEY")),
        ]
        for (name, text) in cases {
            assertThrows(try RSAPrivateKey(pkcs8PEM: text, passphrase: "x"), "invalidKey", name)
        }
    }

    func testPEMWithTrailingDERBytesThrows() throws {
        let pem = try SharedKeys.first.get().pkcs8PEM()
        let lines = pem.split(separator: "\n")
        let der = try Base64.decode(lines.dropFirst().dropLast().joined())
        let padded = "-----BEGIN PRIVATE KEY-----\n\(Base64.encode(der + [0]))\n-----END PRIVATE KEY-----\n"
        assertThrows(try RSAPrivateKey(pkcs8PEM: padded), "invalidKey")
    }

    // MARK: RSA-OAEP

    func testOAEPWrapUnwrapRoundTrip() throws {
        let key = try SharedKeys.first.get()
        for plaintext in [[], [0x42], try SecureRandom.bytes(count: 32), [UInt8](repeating: 0xA5, count: 190)] {
            let ciphertext = try key.publicKey.wrap(plaintext)
            XCTAssertEqual(ciphertext.count, 256)
            XCTAssertEqual(try key.unwrap(ciphertext), plaintext)
        }
        let channelKey = try SecureRandom.bytes(count: 32)
        XCTAssertNotEqual(try key.publicKey.wrap(channelKey), try key.publicKey.wrap(channelKey), "OAEP is randomized")
    }

    func testOAEPPlaintextTooLongThrows() throws {
        let publicKey = try SharedKeys.first.get().publicKey
        XCTAssertEqual(publicKey.maximumWrapLength, 190)
        assertThrows(try publicKey.wrap([UInt8](repeating: 1, count: 191)), "invalidLength")
    }

    func testTamperedOAEPCiphertextThrows() throws {
        let key = try SharedKeys.first.get()
        let ciphertext = try key.publicKey.wrap(SecureRandom.bytes(count: 32))
        for index in [0, 1, 128, 255] {
            var tampered = ciphertext
            tampered[index] ^= 0x01
            assertThrows(try key.unwrap(tampered), .decryptionFailed, "byte \(index)")
        }
        assertThrows(try key.unwrap(Array(ciphertext.dropLast())), "invalidLength")
        assertThrows(try key.unwrap(ciphertext + [0]), "invalidLength")
        assertThrows(try key.unwrap([]), "invalidLength")
        // A ciphertext for another key does not decrypt.
        let other = try SharedKeys.second.get()
        assertThrows(try other.unwrap(ciphertext), .decryptionFailed)
    }

    // MARK: RSA-PSS

    func testPSSSignAndVerify() throws {
        let key = try SharedKeys.first.get()
        let message = utf8("Grüße: hello:3f2b8c1e-9a4d-4f6b-8e2c-1d5a7b9c0e3f:1735689600")
        let signature = try key.signature(for: message)
        XCTAssertEqual(signature.count, 256)
        XCTAssertTrue(key.publicKey.isValidSignature(signature, for: message))
        XCTAssertNotEqual(signature, try key.signature(for: message), "PSS is randomized by its salt")
        XCTAssertTrue(key.publicKey.isValidSignature(try key.signature(for: []), for: []))
    }

    func testPSSRejectsTamperingAndOtherKeys() throws {
        let key = try SharedKeys.first.get()
        let message = utf8("parley.key.v1:channel:key::1:digest")
        let signature = try key.signature(for: message)

        var changedMessage = message
        changedMessage[0] ^= 0x20
        XCTAssertFalse(key.publicKey.isValidSignature(signature, for: changedMessage))
        XCTAssertFalse(key.publicKey.isValidSignature(signature, for: message + [0]))
        var changedSignature = signature
        changedSignature[100] ^= 0x01
        XCTAssertFalse(key.publicKey.isValidSignature(changedSignature, for: message))

        XCTAssertFalse(key.publicKey.isValidSignature(Array(signature.dropLast()), for: message))
        XCTAssertFalse(key.publicKey.isValidSignature(signature + [0], for: message))
        XCTAssertFalse(key.publicKey.isValidSignature([], for: message))
        XCTAssertFalse(key.publicKey.isValidSignature([UInt8](repeating: 0, count: 256), for: message))

        let other = try SharedKeys.second.get()
        XCTAssertFalse(other.publicKey.isValidSignature(signature, for: message))
        XCTAssertFalse(key.publicKey.isValidSignature(try other.signature(for: message), for: message))
    }

    func testConcurrentUseOfOneKey() throws {
        let key = try SharedKeys.first.get()
        let message = utf8("concurrent")
        let signature = try key.signature(for: message)
        let failures = Failures()
        DispatchQueue.concurrentPerform(iterations: 16) { index in
            do {
                let secret = try SecureRandom.bytes(count: 32)
                guard try key.unwrap(key.publicKey.wrap(secret)) == secret,
                      key.publicKey.isValidSignature(signature, for: message),
                      key.publicKey.isValidSignature(try key.signature(for: [UInt8(index)]), for: [UInt8(index)])
                else { return failures.add("iteration \(index) gave a wrong result") }
            } catch {
                failures.add("iteration \(index): \(error)")
            }
        }
        XCTAssertEqual(failures.all, [])
    }
}

/// Collects failures from concurrent closures.
private final class Failures: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [String] = []
    func add(_ item: String) { lock.lock(); items.append(item); lock.unlock() }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return items }
}
