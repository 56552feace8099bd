import ParleyCrypto
import XCTest

final class PrimitivesTests: XCTestCase {
    func testSHA256KnownAnswers() {
        XCTAssertEqual(SHA256.hash(utf8("abc")), hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"))
        XCTAssertEqual(SHA256.hash([]), hex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"))
        XCTAssertEqual(SHA256.hash(utf8("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
                       hex("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"))
        XCTAssertEqual(SHA256.hash([UInt8](repeating: 0x61, count: 1_000_000)),
                       hex("cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"))
    }

    func testSecureRandom() throws {
        XCTAssertEqual(try SecureRandom.bytes(count: 0), [])
        let first = try SecureRandom.bytes(count: 32)
        let second = try SecureRandom.bytes(count: 32)
        XCTAssertEqual(first.count, 32)
        XCTAssertNotEqual(first, second)
        XCTAssertNotEqual(first, [UInt8](repeating: 0, count: 32))
        assertThrows(try SecureRandom.bytes(count: -1), "invalidLength")
    }

    func testConstantTimeEquals() {
        XCTAssertTrue(ConstantTime.equals([], []))
        XCTAssertTrue(ConstantTime.equals([1, 2, 3], [1, 2, 3]))
        XCTAssertFalse(ConstantTime.equals([1, 2, 3], [1, 2, 4]))
        XCTAssertFalse(ConstantTime.equals([0, 2, 3], [1, 2, 3]))
        XCTAssertFalse(ConstantTime.equals([1, 2, 3], [1, 2]))
        XCTAssertFalse(ConstantTime.equals([], [0]))
    }

    func testChallengeAnswer() throws {
        // base64(SHA-256("parley.challenge.v1:" || 00 01 ... 1f)), computed with Python hashlib.
        XCTAssertEqual(try ChallengeAnswer.compute(secret: Array(0..<32)), "cB9idvCCeu1z83Fo8kM2Ku5tnPOEexkUnVH2MgbEtaY=")
        XCTAssertEqual(try ChallengeAnswer.compute(secret: Array(0..<32)),
                       Base64.encode(SHA256.hash(utf8("parley.challenge.v1:") + Array(0..<32))))
        for length in [0, 16, 31, 33, 190] {
            assertThrows(try ChallengeAnswer.compute(secret: [UInt8](repeating: 1, count: length)), "invalidLength")
        }
    }

    func testKeyDigest() throws {
        // base64(SHA-256(00 01 ... 1f)), computed with Python hashlib.
        XCTAssertEqual(KeyDigest.of(try SymmetricKey(bytes: Array(0..<32))), "Yw3NKWbEM2aRElRIu7JbT/QSpJxzLbLIq8G4WBvXEN0=")
    }
}
