import ParleyCrypto
import XCTest

final class InvalidKeyTests: XCTestCase {
    func testNotDERThrowsInvalidKey() {
        assertThrows(try RSAPublicKey(spkiDER: []), "invalidKey")
        assertThrows(try RSAPublicKey(spkiDER: [1, 2, 3]), "invalidKey")
        assertThrows(try RSAPublicKey(spkiDER: utf8("-----BEGIN PUBLIC KEY-----")), "invalidKey")
        assertThrows(try RSAPublicKey(spkiDER: [0x30, 0x00]), "invalidKey")
    }

    func testTruncatedDERThrowsInvalidKey() throws {
        let der = try SharedKeys.first.get().publicKey.spkiDER
        for length in [1, 2, 20, 100, der.count - 1] {
            assertThrows(try RSAPublicKey(spkiDER: Array(der.prefix(length))), "invalidKey", "prefix \(length)")
        }
    }

    func testTrailingBytesThrowInvalidKey() throws {
        let der = try SharedKeys.first.get().publicKey.spkiDER
        let trailing = CryptoError.invalidKey("trailing bytes after the SubjectPublicKeyInfo")
        assertThrows(try RSAPublicKey(spkiDER: der + [0]), trailing)
        assertThrows(try RSAPublicKey(spkiDER: der + der), trailing)
    }

    func testNonCanonicalDERThrowsInvalidKey() throws {
        let der = try SharedKeys.first.get().publicKey.spkiDER
        // 30 82 01 22 ... re-encoded with a needlessly long length field: 30 83 00 01 22 ...
        XCTAssertEqual(Array(der.prefix(4)), [0x30, 0x82, 0x01, 0x22])
        let longForm = [0x30, 0x83, 0x00] + der.dropFirst(2)
        assertThrows(try RSAPublicKey(spkiDER: Array(longForm)), "invalidKey")
    }

    func testKeysOutsideTheContractFromFixtures() throws {
        let fixture = try InteropFixture.load()
        XCTAssertEqual(fixture.invalidKeys.count, 4)
        for invalid in fixture.invalidKeys {
            let der = try Base64.decode(invalid.spkiDerB64)
            assertThrows(try RSAPublicKey(spkiDER: der), invalid.error, invalid.name)
        }
        XCTAssertEqual(fixture.invalidPrivateKeys.count, 5)
        for invalid in fixture.invalidPrivateKeys {
            assertThrows(try RSAPrivateKey(pkcs8PEM: invalid.pem), invalid.error, invalid.name)
        }
    }

    func testExactErrorsForSizeAndExponent() throws {
        let fixture = try InteropFixture.load()
        let byName = Dictionary(uniqueKeysWithValues: fixture.invalidKeys.map { ($0.name, $0.spkiDerB64) })
        assertThrows(try RSAPublicKey(spkiDER: Base64.decode(byName["RSA 1024"] ?? "")), .unsupportedKeySize(1024))
        assertThrows(try RSAPublicKey(spkiDER: Base64.decode(byName["RSA 2048 e=3"] ?? "")), .unsupportedExponent)
        assertThrows(try RSAPublicKey(spkiDER: Base64.decode(byName["EC P-256"] ?? "")), .notRSA)
        assertThrows(try RSAPublicKey(spkiDER: Base64.decode(byName["RSA-PSS restricted"] ?? "")), .notRSA)
    }

    func testErrorDescriptionsCarryNoSecrets() throws {
        let key = try SharedKeys.first.get()
        let pem = try key.pkcs8PEM(passphrase: "correct horse")
        do {
            _ = try RSAPrivateKey(pkcs8PEM: pem, passphrase: "my secret guess")
            XCTFail("wrong passphrase accepted")
        } catch {
            XCTAssertFalse("\(error)".contains("my secret guess"))
            XCTAssertFalse("\(error)".contains("correct horse"))
        }
        let symmetric = try SymmetricKey(bytes: [UInt8](repeating: 0x41, count: 32))
        XCTAssertEqual("\(symmetric)", "SymmetricKey(32 bytes)")
        let box = try AESGCM.seal(utf8("plaintext secret"), using: symmetric)
        do {
            _ = try AESGCM.open(box, using: SymmetricKey.generate())
            XCTFail("wrong key accepted")
        } catch {
            XCTAssertEqual("\(error)", "AES-GCM authentication failed")
        }
    }
}
