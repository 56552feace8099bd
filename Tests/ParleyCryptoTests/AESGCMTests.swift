import ParleyCrypto
import XCTest

final class AESGCMTests: XCTestCase {
    /// AES-256-GCM known answers from the GCM specification (McGrew & Viega, test cases 13–15;
    /// also in NIST's gcmEncryptExtIV256 set): 96-bit IV, no additional data.
    func testKnownAnswerVectors() throws {
        let vectors: [(key: String, iv: String, plaintext: String, ciphertext: String, tag: String)] = [
            (String(repeating: "00", count: 32), String(repeating: "00", count: 12), "", "",
             "530f8afbc74536b9a963b4f1c4cb738b"),
            (String(repeating: "00", count: 32), String(repeating: "00", count: 12), String(repeating: "00", count: 16),
             "cea7403d4d606b6e074ec5d3baf39d18", "d0d1c8a799996bf0265b98b5d48ab919"),
            ("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308", "cafebabefacedbaddecaf888",
             "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
                + "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
             "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
                + "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
             "b094dac5d93471bdec1a502270e3cc6c"),
        ]
        for vector in vectors {
            let key = try SymmetricKey(bytes: hex(vector.key))
            let box = try AESGCM.seal(hex(vector.plaintext), using: key, iv: hex(vector.iv))
            XCTAssertEqual(box.iv, hex(vector.iv))
            XCTAssertEqual(box.ciphertext, hex(vector.ciphertext) + hex(vector.tag))
            let opened = try AESGCM.open(AESGCM.SealedBox(iv: hex(vector.iv), ciphertext: hex(vector.ciphertext + vector.tag)), using: key)
            XCTAssertEqual(opened, hex(vector.plaintext))
        }
    }

    func testRoundTripWithGeneratedIV() throws {
        let key = try SymmetricKey.generate()
        for length in [0, 1, 15, 16, 17, 1000, 65_536] {
            let plaintext = try SecureRandom.bytes(count: length)
            let box = try AESGCM.seal(plaintext, using: key)
            XCTAssertEqual(box.iv.count, 12)
            XCTAssertEqual(box.ciphertext.count, length + 16)
            XCTAssertEqual(try AESGCM.open(box, using: key), plaintext)
        }
        let first = try AESGCM.seal([1, 2, 3], using: key)
        let second = try AESGCM.seal([1, 2, 3], using: key)
        XCTAssertNotEqual(first.iv, second.iv, "each seal must draw a fresh IV")
        XCTAssertNotEqual(first.ciphertext, second.ciphertext)
    }

    func testGivenIVIsUsed() throws {
        let key = try SymmetricKey.generate()
        let iv: [UInt8] = Array(0..<12)
        let box = try AESGCM.seal(utf8("hello"), using: key, iv: iv)
        XCTAssertEqual(box.iv, iv)
        XCTAssertEqual(try AESGCM.seal(utf8("hello"), using: key, iv: iv), box, "same key, IV and plaintext")
        assertThrows(try AESGCM.open(AESGCM.SealedBox(iv: Array(1...12), ciphertext: box.ciphertext), using: key),
                     .authenticationFailed)
    }

    func testWrongIVLengthThrows() throws {
        let key = try SymmetricKey.generate()
        for length in [0, 8, 11, 13, 16] {
            assertThrows(try AESGCM.seal([1], using: key, iv: [UInt8](repeating: 0, count: length)), "invalidLength")
            assertThrows(try AESGCM.SealedBox(iv: [UInt8](repeating: 0, count: length), ciphertext: [UInt8](repeating: 0, count: 16)),
                         "invalidLength")
        }
        assertThrows(try AESGCM.SealedBox(iv: [UInt8](repeating: 0, count: 12), ciphertext: [UInt8](repeating: 0, count: 15)),
                     "invalidLength")
        XCTAssertNoThrow(try AESGCM.SealedBox(iv: [UInt8](repeating: 0, count: 12), ciphertext: [UInt8](repeating: 0, count: 16)))
    }

    func testTamperingThrowsAuthenticationFailed() throws {
        let key = try SymmetricKey.generate()
        let plaintext = utf8("attack at dawn: 10:30")
        let box = try AESGCM.seal(plaintext, using: key)
        let tagStart = box.ciphertext.count - 16

        for index in [0, tagStart - 1] {
            var ciphertext = box.ciphertext
            ciphertext[index] ^= 0x01
            assertThrows(try AESGCM.open(AESGCM.SealedBox(iv: box.iv, ciphertext: ciphertext), using: key),
                         .authenticationFailed, "ciphertext byte \(index)")
        }
        for index in [tagStart, box.ciphertext.count - 1] {
            var ciphertext = box.ciphertext
            ciphertext[index] ^= 0x80
            assertThrows(try AESGCM.open(AESGCM.SealedBox(iv: box.iv, ciphertext: ciphertext), using: key),
                         .authenticationFailed, "tag byte \(index)")
        }
        for index in [0, 11] {
            var iv = box.iv
            iv[index] ^= 0x01
            assertThrows(try AESGCM.open(AESGCM.SealedBox(iv: iv, ciphertext: box.ciphertext), using: key),
                         .authenticationFailed, "IV byte \(index)")
        }
        // Truncation and extension move the tag.
        assertThrows(try AESGCM.open(AESGCM.SealedBox(iv: box.iv, ciphertext: Array(box.ciphertext.dropLast())), using: key),
                     .authenticationFailed)
        assertThrows(try AESGCM.open(AESGCM.SealedBox(iv: box.iv, ciphertext: box.ciphertext + [0]), using: key),
                     .authenticationFailed)
        assertThrows(try AESGCM.open(box, using: SymmetricKey.generate()), .authenticationFailed)
        XCTAssertEqual(try AESGCM.open(box, using: key), plaintext, "the untouched box still opens")
    }

    func testSymmetricKeyLength() throws {
        for length in [0, 16, 24, 31, 33, 64] {
            assertThrows(try SymmetricKey(bytes: [UInt8](repeating: 7, count: length)), "invalidLength")
        }
        let bytes = [UInt8](repeating: 7, count: 32)
        XCTAssertEqual(try SymmetricKey(bytes: bytes).bytes, bytes)
        let generated = try SymmetricKey.generate()
        XCTAssertEqual(generated.bytes.count, 32)
        XCTAssertNotEqual(generated, try SymmetricKey.generate())
        XCTAssertEqual(generated, try SymmetricKey(bytes: generated.bytes))
    }
}
