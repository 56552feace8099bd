import XCTest

@testable import ParleyProtocol

final class FrameRoundTripTests: XCTestCase {
    func testEveryRequestTypeRoundTrips() throws {
        XCTAssertEqual(Set(Fixture.requests.map(\.type)), Set(RequestType.allCases), "a request type has no fixture")
        for (index, request) in Fixture.requests.enumerated() {
            let frame = RequestFrame(id: "req-\(index)", request: request)
            let bytes = frame.encode()
            switch RequestDecoder.decode(bytes) {
            case .success(let decoded): XCTAssertEqual(decoded, frame)
            case .failure(let rejection):
                XCTFail("\(request.type): \(rejection.message) in \(String(decoding: bytes, as: UTF8.self))")
            }
            XCTAssertEqual(try RequestFrame.decode(bytes), frame)
        }
    }

    func testEveryResultTypeRoundTrips() throws {
        XCTAssertEqual(Set(Fixture.responses.map(\.type)), Set(RequestType.allCases), "a result type has no fixture")
        for response in Fixture.responses {
            let frame = ResultFrame(re: "r-\(response.type.rawValue)", response: response)
            let bytes = frame.encode()
            XCTAssertEqual(try ServerFrame.decode(bytes), .result(re: frame.re, response), String(decoding: bytes, as: UTF8.self))
            XCTAssertEqual(ServerFrame.result(re: frame.re, response).encode(), bytes)
        }
    }

    func testEveryEventTypeRoundTrips() throws {
        XCTAssertEqual(Set(Fixture.events.map(\.type)), Set(EventType.allCases))
        for event in Fixture.events {
            let bytes = event.encode()
            XCTAssertEqual(try ServerFrame.decode(bytes), .event(event), String(decoding: bytes, as: UTF8.self))
            XCTAssertNil(parseObject(bytes)["re"], "events carry no re")
        }
    }

    func testEveryErrorFrameRoundTrips() throws {
        for error in Fixture.errors {
            let bytes = error.encode()
            XCTAssertEqual(try ServerFrame.decode(bytes), .error(error), String(decoding: bytes, as: UTF8.self))
        }
    }

    func testKeyExpiredWithoutKeyWritesExplicitNull() {
        let error = ErrorFrame(re: "r1", code: .keyExpired, message: "m", currentKeyID: nil)
        XCTAssertEqual(
            String(decoding: error.encode(), as: UTF8.self),
            "{\"re\":\"r1\",\"type\":\"error\",\"code\":\"key_expired\",\"message\":\"m\",\"current_key_id\":null}")
        let object = parseObject(error.encode())
        XCTAssertEqual(object["current_key_id"], .null)
        // Codes that do not carry it leave it out.
        XCTAssertNil(parseObject(ErrorFrame(re: "r", code: .notFound, message: "m").encode())["current_key_id"])
    }

    func testErrorWithoutReadableIdHasNullRe() {
        let bytes = ErrorFrame(re: nil, code: .badRequest, message: "x").encode()
        XCTAssertEqual(String(decoding: bytes, as: UTF8.self), "{\"re\":null,\"type\":\"error\",\"code\":\"bad_request\",\"message\":\"x\"}")
    }

    func testMembersMismatchCarriesSortedMembersAndVersion() {
        let error = ErrorFrame.membersMismatch(re: "r", members: [Fixture.carol, Fixture.alice], membershipVersion: 4)
        let object = parseObject(error.encode())
        XCTAssertEqual(object["members"], .array([.string(Fixture.alice.string), .string(Fixture.carol.string)]))
        XCTAssertEqual(object["membership_version"], .integer(4))
        XCTAssertEqual(object["code"], .string("members_mismatch"))
    }

    func testEncodingIsDeterministicAndExact() {
        let frame = RequestFrame(
            id: "7",
            request: .message(
                Request.Message(
                    channelID: Fixture.channel, keyID: Fixture.key1, iv: [UInt8](repeating: 0, count: 12),
                    ciphertext: [UInt8](repeating: 0, count: 16), ts: 1_700_000_000, clientMsgID: Fixture.clientMsg)))
        let expected =
            "{\"id\":\"7\",\"type\":\"message\",\"channel_id\":\"\(Fixture.channel)\",\"key_id\":\"\(Fixture.key1)\","
            + "\"iv\":\"AAAAAAAAAAAAAAAA\",\"ciphertext\":\"AAAAAAAAAAAAAAAAAAAAAA==\",\"ts\":1700000000,"
            + "\"client_msg_id\":\"\(Fixture.clientMsg)\"}"
        XCTAssertEqual(String(decoding: frame.encode(), as: UTF8.self), expected)
        XCTAssertEqual(frame.encode(), frame.encode())
    }

    func testStatementEncodesExactlyTheContractFieldsWithSortedMembers() {
        var writer = JSONWriter()
        MembershipStatement(
            version: 1, prev: [], ts: 5, ownerID: Fixture.bob, members: [Fixture.carol, Fixture.bob, Fixture.alice],
            signerID: Fixture.bob, sig: [1, 2, 3]
        ).encode(into: &writer)
        XCTAssertEqual(
            String(decoding: writer.bytes, as: UTF8.self),
            "{\"version\":1,\"prev\":\"\",\"ts\":5,\"owner_id\":\"\(Fixture.bob)\",\"members\":[\"\(Fixture.alice)\",\"\(Fixture.bob)\",\"\(Fixture.carol)\"],\"signer_id\":\"\(Fixture.bob)\",\"sig\":\"AQID\"}"
        )
        var closing = JSONWriter()
        Fixture.closingStatement.encode(into: &closing)
        let object = parseObject(closing.bytes)
        XCTAssertEqual(object["owner_id"], .string(""))
        XCTAssertEqual(object["members"], .array([]))
        XCTAssertEqual(Set(object.keys), ["version", "prev", "ts", "owner_id", "members", "signer_id", "sig"])
    }

    func testOptionalResultFieldsArePresentOnlyWhenTheContractSays() {
        let withoutPasskey = ResultFrame(
            re: "r", response: .challenge(Response.Challenge(userID: Fixture.alice, username: "a", session: "s", sessionExpiresAt: 1)))
        XCTAssertNil(parseObject(withoutPasskey.encode())["passkey"])
        let keyless = parseObject(ResultFrame(re: "r", response: .key(Response.Key(key: nil, rotationRequired: true))).encode())
        XCTAssertEqual(keyless["key"], .null)
        let noCopy = parseObject(Event.key(Fixture.firstKeyRecordWithoutCopy).encode())
        XCTAssertEqual(noCopy["encrypted_key"], .null)
        XCTAssertEqual(noCopy["previous_key_id"], .null)
        XCTAssertEqual(noCopy["type"], .string("event.key"))
        let channels = parseObject(ResultFrame(re: "r", response: Fixture.responses[8]).encode())
        guard case .array(let list)? = channels["channels"], case .object(let second)? = list.last else {
            return XCTFail("channels missing")
        }
        XCTAssertEqual(second["key_id"], .null)
    }
}
