import ParleyEncoding
import XCTest

@testable import ParleyProtocol

final class SignedTextTests: XCTestCase {
    private func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

    func testMessageText() {
        XCTAssertEqual(
            text(SignedText.message(body: "hi: thére 😀", channelID: Fixture.channel, ts: 1_700_000_000)),
            "hi: thére 😀:c0000000-1111-4222-8333-444455556666:1700000000")
        XCTAssertEqual(text(SignedText.message(body: "", channelID: Fixture.channel, ts: 0)), ":c0000000-1111-4222-8333-444455556666:0")
    }

    func testMembershipTextSortsMembersAndLeavesPrevEmptyForVersionOne() {
        let expected =
            "parley.membership.v1:c0000000-1111-4222-8333-444455556666:1::1700000000:"
            + "0a1b2c3d-0000-4000-8000-00000000000a:"
            + "0a1b2c3d-0000-4000-8000-00000000000a,0b1b2c3d-0000-4000-8000-00000000000b"
        XCTAssertEqual(text(Fixture.statementV1.signedText(channelID: Fixture.channel)), expected)
        // The free function sorts too, whatever order it is given.
        XCTAssertEqual(
            text(
                SignedText.membership(
                    channelID: Fixture.channel, version: 1, prev: [], ts: 1_700_000_000, ownerID: Fixture.alice,
                    members: [Fixture.bob, Fixture.alice])), expected)
    }

    func testMembershipTextWithPrevAndNoOwner() {
        let prev = [UInt8](repeating: 0xFF, count: 32)
        XCTAssertEqual(
            text(
                SignedText.membership(
                    channelID: Fixture.channel, version: 3, prev: prev, ts: 12, ownerID: nil, members: [])),
            "parley.membership.v1:c0000000-1111-4222-8333-444455556666:3:"
                + "//////////////////////////////////////////8=:12::")
        XCTAssertEqual(
            text(
                SignedText.membership(
                    channelID: Fixture.channel, version: 2, prev: [0, 0, 0], ts: 5, ownerID: Fixture.carol,
                    members: [Fixture.carol, Fixture.bob, Fixture.alice])),
            "parley.membership.v1:c0000000-1111-4222-8333-444455556666:2:AAAA:5:0c1b2c3d-0000-4000-8000-00000000000c:"
                + "0a1b2c3d-0000-4000-8000-00000000000a,0b1b2c3d-0000-4000-8000-00000000000b,0c1b2c3d-0000-4000-8000-00000000000c"
        )
    }

    func testKeyRecordText() {
        let digest = [UInt8](repeating: 0, count: 32)
        XCTAssertEqual(
            text(
                SignedText.keyRecord(
                    channelID: Fixture.channel, keyID: Fixture.key1, previousKeyID: nil, membershipVersion: 1, digest: digest)),
            "parley.key.v1:c0000000-1111-4222-8333-444455556666:4b000000-0000-4000-8000-000000000001::1:"
                + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        XCTAssertEqual(
            text(Fixture.keyRecord.signedText),
            "parley.key.v1:c0000000-1111-4222-8333-444455556666:4b000000-0000-4000-8000-000000000002:"
                + "4b000000-0000-4000-8000-000000000001:2:\(Base64.encode(Fixture.keyRecord.digest))")
        // The request and the stored record sign the same text.
        let request = Request.Keys(
            channelID: Fixture.channel, keyID: Fixture.key2, previousKeyID: Fixture.key1, membershipVersion: 2,
            digest: Fixture.keyRecord.digest, sig: [], encryptedKeys: [])
        XCTAssertEqual(request.signedText, Fixture.keyRecord.signedText)
    }

    func testChallengeAnswerInput() {
        let secret = (0..<32).map { UInt8($0) }
        let input = SignedText.challengeAnswerInput(secret: secret)
        XCTAssertEqual(input.count, 52)
        XCTAssertEqual(Array(input.prefix(20)), Array("parley.challenge.v1:".utf8))
        XCTAssertEqual(Array(input.suffix(32)), secret)
    }

    func testMessagePlaintext() throws {
        let plaintext = MessagePlaintext(body: "say \"hi\"\n", sig: [1, 2, 3])
        XCTAssertEqual(text(plaintext.encode()), #"{"body":"say \"hi\"\n","sig":"AQID"}"#)
        XCTAssertEqual(try MessagePlaintext.decode(plaintext.encode()), plaintext)
        XCTAssertEqual(
            try MessagePlaintext.decode(Array(#"{"v":2,"sig":"AQID","body":"x","attachments":[]}"#.utf8)),
            MessagePlaintext(body: "x", sig: [1, 2, 3]))
        XCTAssertThrowsError(try MessagePlaintext.decode(Array(#"{"body":"x"}"#.utf8))) { error in
            XCTAssertEqual((error as? DecodeError)?.field, "sig")
        }
        XCTAssertThrowsError(try MessagePlaintext.decode(Array(#"{"body":"x","sig":"A"}"#.utf8))) { error in
            XCTAssertEqual(error as? DecodeError, DecodeError(field: "sig", reason: "not base64"))
        }
        XCTAssertThrowsError(try MessagePlaintext.decode([0xFF]))
    }

    func testConstants() {
        XCTAssertEqual(ProtocolConstants.path, "/ws")
        XCTAssertEqual(ProtocolConstants.subprotocol, "parley.v1")
        XCTAssertEqual(ProtocolConstants.challengePrefix.utf8.count, 20)
        XCTAssertEqual(Limits.maxFrameBytes, 262_144)
        XCTAssertEqual(Limits.maxCiphertextBytes, 65_536)
        XCTAssertEqual(Limits.maxInteger, 9_007_199_254_740_991)
        XCTAssertEqual(Limits.sessionTTLSeconds, 2_592_000)
        XCTAssertEqual(Request.Messages(channelID: Fixture.channel).effectiveLimit, 50)
    }
}
