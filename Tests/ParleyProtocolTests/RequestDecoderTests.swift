import XCTest

@testable import ParleyProtocol

/// The §10 order of checks: envelope (`bad_request`), `unknown_type`, then each field.
final class RequestDecoderTests: XCTestCase {
    let ch = Fixture.channel.string
    let a = Fixture.alice.string, b = Fixture.bob.string

    private func rejection(_ bytes: [UInt8], file: StaticString = #filePath, line: UInt = #line) -> RequestRejection? {
        switch RequestDecoder.decode(bytes) {
        case .success(let frame):
            XCTFail("accepted: \(frame)", file: file, line: line)
            return nil
        case .failure(let rejection):
            return rejection
        }
    }

    private func accepted(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> Request? {
        switch RequestDecoder.decode(Array(text.utf8)) {
        case .success(let frame): return frame.request
        case .failure(let rejection):
            XCTFail("rejected: \(rejection.message)", file: file, line: line)
            return nil
        }
    }

    func testOrderOfChecksTable() {
        let id65 = String(repeating: "x", count: 65)
        let id64 = String(repeating: "é", count: 64)  // 64 scalars, 128 bytes
        let upper = ch.uppercased()
        let stmt = { (members: String) in
            #"{"version":2,"prev":"","ts":1,"owner_id":"\#(self.a)","members":\#(members),"signer_id":"\#(self.a)","sig":""}"#
        }
        // (input, code, re, field)
        let table: [(String, ErrorCode, String?, String?)] = [
            ("not json", .badRequest, nil, nil),
            ("", .badRequest, nil, nil),
            (#"{"id":"1","type":"ping"} x"#, .badRequest, nil, nil),
            (#"[{"id":"1","type":"ping"}]"#, .badRequest, nil, nil),
            (#""ping""#, .badRequest, nil, nil),
            (#"{"type":"ping"}"#, .badRequest, nil, "id"),
            (#"{"id":null,"type":"ping"}"#, .badRequest, nil, "id"),
            (#"{"id":7,"type":"ping"}"#, .badRequest, nil, "id"),
            (#"{"id":"","type":"ping"}"#, .badRequest, nil, "id"),
            (#"{"id":"\#(id65)","type":"ping"}"#, .badRequest, nil, "id"),
            (#"{"id":"\#(id65)","type":"nonsense"}"#, .badRequest, nil, "id"),
            (#"{"id":"\#(id64)"}"#, .badRequest, id64, "type"),
            (#"{"id":"r1"}"#, .badRequest, "r1", "type"),
            (#"{"id":"r1","type":5}"#, .badRequest, "r1", "type"),
            (#"{"id":"r1","type":"nonsense"}"#, .unknownType, "r1", "type"),
            (#"{"id":"r1","type":"event.message"}"#, .unknownType, "r1", "type"),
            (#"{"id":"r1","type":"error"}"#, .unknownType, "r1", "type"),
            (#"{"id":"r1","type":"PING"}"#, .unknownType, "r1", "type"),
            (#"{"id":"r1","type":"message","channel_id":"\#(ch)","key_id":"\#(ch)","iv":"!!!","ciphertext":"AAAAAAAAAAAAAAAAAAAAAA==","ts":1,"client_msg_id":"\#(ch)"}"#, .badRequest, "r1", "iv"),
            (#"{"id":"r1","type":"message","channel_id":"\#(ch)","key_id":"\#(ch)","iv":"AAAA","ciphertext":"AAAAAAAAAAAAAAAAAAAAAA==","ts":1,"client_msg_id":"\#(ch)"}"#, .badRequest, "r1", "iv"),
            (#"{"id":"r1","type":"message","channel_id":"\#(ch)","key_id":"\#(ch)","iv":"AAAAAAAAAAAAAAAA","ciphertext":"AAAAAAAAAAAAAAAAAAAA","ts":1,"client_msg_id":"\#(ch)"}"#, .badRequest, "r1", "ciphertext"),
            (#"{"id":"r1","type":"message","channel_id":"\#(ch)","key_id":"\#(ch)","iv":"AAAAAAAAAAAAAAAA","ciphertext":"AAAAAAAAAAAAAAAAAAAAAA==","ts":1,"client_msg_id":"nope"}"#, .badRequest, "r1", "client_msg_id"),
            (#"{"id":"r1","type":"message","channel_id":"\#(ch)","key_id":"\#(ch)","iv":"AAAAAAAAAAAAAAAA","ciphertext":"AAAAAAAAAAAAAAAAAAAAAA==","ts":"1","client_msg_id":"\#(ch)"}"#, .badRequest, "r1", "ts"),
            (#"{"id":"r1","type":"channel.members","channel_id":"\#(upper)"}"#, .badRequest, "r1", "channel_id"),
            (#"{"id":"r1","type":"channel.members"}"#, .badRequest, "r1", "channel_id"),
            (#"{"id":"r1","type":"messages","channel_id":"\#(ch)","after":1.0}"#, .badRequest, "r1", "after"),
            (#"{"id":"r1","type":"messages","channel_id":"\#(ch)","after":1e0}"#, .badRequest, "r1", "after"),
            (#"{"id":"r1","type":"messages","channel_id":"\#(ch)","after":true}"#, .badRequest, "r1", "after"),
            (#"{"id":"r1","type":"messages","channel_id":"\#(ch)","after":-1}"#, .badRequest, "r1", "after"),
            (#"{"id":"r1","type":"messages","channel_id":"\#(ch)","after":9007199254740992}"#, .badRequest, "r1", "after"),
            (#"{"id":"r1","type":"messages","channel_id":"\#(ch)","after":123456789012345678901234567890}"#, .badRequest, "r1", "after"),
            (#"{"id":"r1","type":"messages","channel_id":"\#(ch)","after":"1"}"#, .badRequest, "r1", "after"),
            (#"{"id":"r1","type":"messages","channel_id":"\#(ch)","limit":0}"#, .badRequest, "r1", "limit"),
            (#"{"id":"r1","type":"messages","channel_id":"\#(ch)","limit":201}"#, .badRequest, "r1", "limit"),
            (#"{"id":"r1","type":"subscribe","channels":[{"channel_id":"\#(ch)","after":1.5}]}"#, .badRequest, "r1", "channels[0].after"),
            (#"{"id":"r1","type":"subscribe","channels":["\#(ch)"]}"#, .badRequest, "r1", "channels[0]"),
            (#"{"id":"r1","type":"subscribe","channels":{}}"#, .badRequest, "r1", "channels"),
            (#"{"id":"r1","type":"unsubscribe","channel_ids":["\#(ch)","x"]}"#, .badRequest, "r1", "channel_ids[1]"),
            (#"{"id":"r1","type":"channel.create","channel_id":"\#(ch)","name":"n","membership":\#(stmt(#"["\#(a)","B"]"#))}"#, .badRequest, "r1", "membership.members[1]"),
            (#"{"id":"r1","type":"channel.create","channel_id":"\#(ch)","name":"","membership":\#(stmt("[]"))}"#, .badRequest, "r1", "name"),
            (#"{"id":"r1","type":"channel.create","channel_id":"\#(ch)","name":"\#(String(repeating: "😀", count: 65))","membership":\#(stmt("[]"))}"#, .badRequest, "r1", "name"),
            (#"{"id":"r1","type":"channel.create","channel_id":"\#(ch)","name":"n","membership":[]}"#, .badRequest, "r1", "membership"),
            (#"{"id":"r1","type":"channel.add","channel_id":"\#(ch)","user_id":"\#(b)","membership":{"version":2,"prev":"AAAA","ts":1,"owner_id":"","members":[],"signer_id":"\#(a)","sig":""}}"#, .badRequest, "r1", "membership.prev"),
            (#"{"id":"r1","type":"channel.add","channel_id":"\#(ch)","user_id":"\#(b)","membership":{"version":2,"prev":"","ts":1,"owner_id":"x","members":[],"signer_id":"\#(a)","sig":""}}"#, .badRequest, "r1", "membership.owner_id"),
            (#"{"id":"r1","type":"keys","channel_id":"\#(ch)","key_id":"\#(ch)","previous_key_id":null,"membership_version":1,"digest":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","sig":"","encrypted_keys":[{"user_id":"\#(a)","encrypted_key":"AQ="}]}"#, .badRequest, "r1", "encrypted_keys[0].encrypted_key"),
            (#"{"id":"r1","type":"keys","channel_id":"\#(ch)","key_id":"\#(ch)","previous_key_id":null,"membership_version":1,"digest":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","sig":"","encrypted_keys":[{"user_id":"\#(a)","encrypted_key":""},{"encrypted_key":""}]}"#, .badRequest, "r1", "encrypted_keys[1].user_id"),
            (#"{"id":"r1","type":"keys","channel_id":"\#(ch)","key_id":"\#(ch)","previous_key_id":"x","membership_version":1,"digest":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","sig":"","encrypted_keys":[]}"#, .badRequest, "r1", "previous_key_id"),
            (#"{"id":"r1","type":"keys","channel_id":"\#(ch)","key_id":"\#(ch)","previous_key_id":null,"membership_version":1,"digest":"AAAA","sig":"","encrypted_keys":[]}"#, .badRequest, "r1", "digest"),
            (#"{"id":"r1","type":"challenge","challenge_id":"\#(ch)","answer":"AAAA"}"#, .badRequest, "r1", "answer"),
            (#"{"id":"r1","type":"challenge","challenge_id":"abc","answer":"AAAA"}"#, .badRequest, "r1", "challenge_id"),
            (#"{"id":"r1","type":"signup","username":"alice","public_key":7}"#, .badRequest, "r1", "public_key"),
            (#"{"id":"r1","type":"signup","username":["alice"],"public_key":"k"}"#, .badRequest, "r1", "username"),
            (#"{"id":"r1","type":"login","username":"alice"}"#, .badRequest, "r1", "passkey"),
            (#"{"id":"r1","type":"auth","session":null}"#, .badRequest, "r1", "session"),
            (#"{"id":"r1","type":"user"}"#, .badRequest, "r1", "username"),
            (#"{"id":"r1","type":"user","username":"bob","user_id":"\#(b)"}"#, .badRequest, "r1", "user_id"),
            (#"{"id":"r1","type":"user","user_id":"\#(b.uppercased())"}"#, .badRequest, "r1", "user_id"),
            (#"{"id":"r1","type":"channel.membership","channel_id":"\#(ch)","after_version":-3}"#, .badRequest, "r1", "after_version"),
        ]
        for (input, code, re, field) in table {
            guard let result = rejection(Array(input.utf8)) else {
                XCTFail("input: \(input)")
                continue
            }
            XCTAssertEqual(result.code, code, input)
            XCTAssertEqual(result.re, re, input)
            XCTAssertEqual(result.field, field, input)
            if let field { XCTAssertTrue(result.message.contains(field), "message names \(field): \(result.message)") }
            XCTAssertEqual(result.errorFrame.re, re)
        }
    }

    func testInvalidUTF8IsBadRequestWithoutRe() {
        var bytes = Array(#"{"id":"r1","type":"ping","x":"ab"}"#.utf8)
        bytes.insert(0xFF, at: bytes.count - 3)
        let result = rejection(bytes)
        XCTAssertEqual(result?.code, .badRequest)
        XCTAssertNil(result?.re)
        var overlong = Array(#"{"id":"r1","type":"ping"}"#.utf8)
        overlong.insert(contentsOf: [0xC0, 0x80], at: 7)
        XCTAssertEqual(rejection(overlong)?.code, .badRequest)
    }

    func testAcceptedEdgeCases() {
        // null for an optional field is the same as leaving it out.
        XCTAssertEqual(
            accepted(#"{"id":"r1","type":"messages","channel_id":"\#(ch)","after":null,"before":null,"limit":null}"#),
            .messages(Request.Messages(channelID: Fixture.channel)))
        XCTAssertEqual(
            accepted(#"{"id":"r1","type":"messages","channel_id":"\#(ch)","after":9007199254740991,"limit":200}"#),
            .messages(Request.Messages(channelID: Fixture.channel, after: 9_007_199_254_740_991, limit: 200)))
        // -0 is an integer without fraction or exponent.
        XCTAssertEqual(
            accepted(#"{"id":"r1","type":"messages","channel_id":"\#(ch)","after":-0}"#),
            .messages(Request.Messages(channelID: Fixture.channel, after: 0)))
        // Unknown fields are ignored, at the top and nested.
        XCTAssertEqual(
            accepted(#"{"id":"r1","type":"subscribe","extra":{"deep":[1,2]},"channels":[{"channel_id":"\#(ch)","after":3,"x":true}]}"#),
            .subscribe(Request.Subscribe(channels: [Request.SubscribeChannel(channelID: Fixture.channel, after: 3)])))
        // Raw fields stay raw: format checks come later with their own codes.
        XCTAssertEqual(
            accepted(#"{"id":"r1","type":"signup","username":"NOT VALID!","public_key":"not base64"}"#),
            .signup(Request.Signup(username: "NOT VALID!", publicKey: "not base64")))
        XCTAssertEqual(accepted(#"{"id":"r1","type":"login","username":"x","passkey":"==="}"#), .login(Request.Login(username: "x", passkey: "===")))
        // Channel name counts Unicode scalars, not bytes.
        let name = String(repeating: "😀", count: 64)
        if case .channelCreate(let create)? = accepted(
            #"{"id":"r1","type":"channel.create","channel_id":"\#(ch)","name":"\#(name)","membership":{"version":1,"prev":"","ts":1,"owner_id":"\#(a)","members":["\#(a)"],"signer_id":"\#(a)","sig":""}}"#)
        {
            XCTAssertEqual(create.name, name)
        } else {
            XCTFail("channel.create with a 64-scalar name was not accepted")
        }
        // Whitespace around the frame, and a duplicate id (the last one wins).
        switch RequestDecoder.decode(Array(" {\"id\":\"a\",\"type\":\"ping\",\"id\":\"b\"}\n".utf8)) {
        case .success(let frame): XCTAssertEqual(frame, RequestFrame(id: "b", request: .ping))
        case .failure(let rejection): XCTFail(rejection.message)
        }
    }

    func testDecodesFromRawBufferAndBinaryRejection() {
        let bytes = Array(#"{"id":"r9","type":"ping"}"#.utf8)
        let result = bytes.withUnsafeBytes { RequestDecoder.decode($0) }
        XCTAssertEqual(try result.get(), RequestFrame(id: "r9", request: .ping))
        XCTAssertEqual(RequestRejection.binaryFrame.code, .badRequest)
        XCTAssertNil(RequestRejection.binaryFrame.errorFrame.re)
        XCTAssertThrowsError(try RequestFrame.decode(Array("{}".utf8))) { error in
            XCTAssertEqual((error as? RequestRejection)?.field, "id")
        }
    }
}
