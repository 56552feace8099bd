import XCTest

@testable import ParleyProtocol

/// Hand-written frames exactly as the contract spells them.
final class ContractLiteralTests: XCTestCase {
    let a = Fixture.alice.string, b = Fixture.bob.string, c = Fixture.carol.string
    let ch = Fixture.channel.string, k1 = Fixture.key1.string, k2 = Fixture.key2.string
    let iv = "AAECAwQFBgcICQoL"  // 12 bytes 0...11
    let ct = "AAAAAAAAAAAAAAAAAAAAAA=="  // 16 zero bytes
    let d32 = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="  // 32 zero bytes
    let zero32 = [UInt8](repeating: 0, count: 32)

    private func request(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> Request? {
        switch RequestDecoder.decode(Array(text.utf8)) {
        case .success(let frame):
            XCTAssertEqual(frame.id, "1", file: file, line: line)
            return frame.request
        case .failure(let rejection):
            XCTFail("rejected: \(rejection.message)", file: file, line: line)
            return nil
        }
    }

    private func server(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> ServerFrame? {
        do {
            return try ServerFrame.decode(Array(text.utf8))
        } catch {
            XCTFail("rejected: \(error)", file: file, line: line)
            return nil
        }
    }

    func testAccountRequests() {
        XCTAssertEqual(
            request(#"{"id":"1","type":"signup","username":"alice","public_key":"MIIBIjAN"}"#),
            .signup(Request.Signup(username: "alice", publicKey: "MIIBIjAN")))
        XCTAssertEqual(
            request(#"{"id":"1","type":"login","username":"alice","passkey":"abc-_"}"#),
            .login(Request.Login(username: "alice", passkey: "abc-_")))
        XCTAssertEqual(
            request(#"{"id":"1","type":"challenge","challenge_id":"\#(Fixture.challenge)","answer":"\#(d32)"}"#),
            .challenge(Request.Challenge(challengeID: Fixture.challenge, answer: zero32)))
        XCTAssertEqual(request(#"{"id":"1","type":"auth","session":"tok"}"#), .auth(Request.Auth(session: "tok")))
        XCTAssertEqual(request(#"{"id":"1","type":"logout"}"#), .logout)
        XCTAssertEqual(request(#"{"id":"1","type":"user","username":"bob"}"#), .user(.username("bob")))
        XCTAssertEqual(request(#"{"id":"1","type":"user","user_id":"\#(b)"}"#), .user(.userID(Fixture.bob)))
        XCTAssertEqual(request(#"{"id":"1","type":"user","user_id":"\#(b)","username":null}"#), .user(.userID(Fixture.bob)))
        XCTAssertEqual(request(#"{"id":"1","type":"ping"}"#), .ping)
    }

    func testChannelRequests() {
        let statement = #"{"version":1,"prev":"","ts":1700000000,"owner_id":"\#(a)","members":["\#(b)","\#(a)"],"signer_id":"\#(a)","sig":"AQID","extra":1}"#
        let expected = MembershipStatement(
            version: 1, prev: [], ts: 1_700_000_000, ownerID: Fixture.alice, members: [Fixture.alice, Fixture.bob],
            signerID: Fixture.alice, sig: [1, 2, 3])
        XCTAssertEqual(
            request(#"{"id":"1","type":"channel.create","channel_id":"\#(ch)","name":"general","membership":\#(statement)}"#),
            .channelCreate(Request.ChannelCreate(channelID: Fixture.channel, name: "general", membership: expected)))
        XCTAssertEqual(request(#"{"id":"1","type":"channels"}"#), .channels)
        XCTAssertEqual(
            request(#"{"id":"1","type":"channel.members","channel_id":"\#(ch)"}"#),
            .channelMembers(Request.ChannelMembers(channelID: Fixture.channel)))
        XCTAssertEqual(
            request(#"{"id":"1","type":"channel.membership","channel_id":"\#(ch)","after_version":3}"#),
            .channelMembership(Request.ChannelMembership(channelID: Fixture.channel, afterVersion: 3)))
        let v2 = #"{"version":2,"prev":"\#(d32)","ts":1700000001,"owner_id":"\#(a)","members":["\#(a)","\#(b)","\#(c)"],"signer_id":"\#(a)","sig":"AQID"}"#
        let expected2 = MembershipStatement(
            version: 2, prev: zero32, ts: 1_700_000_001, ownerID: Fixture.alice, members: [Fixture.alice, Fixture.bob, Fixture.carol],
            signerID: Fixture.alice, sig: [1, 2, 3])
        XCTAssertEqual(
            request(#"{"id":"1","type":"channel.add","channel_id":"\#(ch)","user_id":"\#(c)","membership":\#(v2)}"#),
            .channelAdd(Request.MembershipChange(channelID: Fixture.channel, userID: Fixture.carol, membership: expected2)))
        let leave = #"{"version":3,"prev":"\#(d32)","ts":1700000002,"owner_id":"","members":[],"signer_id":"\#(a)","sig":"AQID"}"#
        XCTAssertEqual(
            request(#"{"id":"1","type":"channel.remove","channel_id":"\#(ch)","user_id":"\#(a)","membership":\#(leave)}"#),
            .channelRemove(
                Request.MembershipChange(
                    channelID: Fixture.channel, userID: Fixture.alice,
                    membership: MembershipStatement(
                        version: 3, prev: zero32, ts: 1_700_000_002, ownerID: nil, members: [], signerID: Fixture.alice,
                        sig: [1, 2, 3]))))
    }

    func testKeyAndMessageRequests() {
        XCTAssertEqual(
            request(#"{"id":"1","type":"key","channel_id":"\#(ch)"}"#), .key(Request.Key(channelID: Fixture.channel)))
        XCTAssertEqual(
            request(#"{"id":"1","type":"key","channel_id":"\#(ch)","key_id":"\#(k1)"}"#),
            .key(Request.Key(channelID: Fixture.channel, keyID: Fixture.key1)))
        XCTAssertEqual(
            request(
                #"{"id":"1","type":"keys","channel_id":"\#(ch)","key_id":"\#(k2)","previous_key_id":null,"membership_version":2,"digest":"\#(d32)","sig":"AQID","encrypted_keys":[{"user_id":"\#(a)","encrypted_key":"BAUG"}]}"#
            ),
            .keys(
                Request.Keys(
                    channelID: Fixture.channel, keyID: Fixture.key2, previousKeyID: nil, membershipVersion: 2, digest: zero32,
                    sig: [1, 2, 3], encryptedKeys: [WrappedKey(userID: Fixture.alice, encryptedKey: [4, 5, 6])])))
        XCTAssertEqual(
            request(
                #"{"id":"1","type":"message","channel_id":"\#(ch)","key_id":"\#(k1)","iv":"\#(iv)","ciphertext":"\#(ct)","ts":1700000000,"client_msg_id":"\#(Fixture.clientMsg)"}"#
            ),
            .message(
                Request.Message(
                    channelID: Fixture.channel, keyID: Fixture.key1, iv: Array(0..<12), ciphertext: [UInt8](repeating: 0, count: 16),
                    ts: 1_700_000_000, clientMsgID: Fixture.clientMsg)))
        XCTAssertEqual(
            request(#"{"id":"1","type":"messages","channel_id":"\#(ch)","before":10,"limit":1}"#),
            .messages(Request.Messages(channelID: Fixture.channel, before: 10, limit: 1)))
        XCTAssertEqual(
            request(#"{"id":"1","type":"subscribe","channels":[{"channel_id":"\#(ch)","after":0},{"channel_id":"\#(k1)"}]}"#),
            .subscribe(
                Request.Subscribe(channels: [
                    Request.SubscribeChannel(channelID: Fixture.channel, after: 0),
                    Request.SubscribeChannel(channelID: Fixture.key1),
                ])))
        XCTAssertEqual(
            request(#"{"id":"1","type":"unsubscribe","channel_ids":["\#(ch)"]}"#),
            .unsubscribe(Request.Unsubscribe(channelIDs: [Fixture.channel])))
    }

    func testServerResultLiterals() {
        XCTAssertEqual(
            server(#"{"re":"1","type":"signup","challenge_id":"\#(Fixture.challenge)","challenge":"AQID","expires_at":1700000300000}"#),
            .result(re: "1", .signup(Response.ChallengeIssued(challengeID: Fixture.challenge, challenge: [1, 2, 3], expiresAt: 1_700_000_300_000))))
        XCTAssertEqual(
            server(#"{"re":"1","type":"challenge","user_id":"\#(a)","username":"alice","session":"s","session_expires_at":5,"passkey":"p"}"#),
            .result(re: "1", .challenge(Response.Challenge(userID: Fixture.alice, username: "alice", session: "s", sessionExpiresAt: 5, passkey: "p"))))
        XCTAssertEqual(
            server(#"{"re":"1","type":"message","channel_id":"\#(ch)","seq":7,"received_at":9,"duplicate":true}"#),
            .result(re: "1", .message(Response.Message(channelID: Fixture.channel, seq: 7, receivedAt: 9, duplicate: true))))
        XCTAssertEqual(
            server(#"{"re":"1","type":"key","key":null,"rotation_required":true}"#),
            .result(re: "1", .key(Response.Key(key: nil, rotationRequired: true))))
        XCTAssertEqual(
            server(#"{"re":"1","type":"subscribe","channels":[{"channel_id":"\#(ch)","last_seq":3,"recovered":false}]}"#),
            .result(re: "1", .subscribe(Response.Subscribe(channels: [Response.SubscribedChannel(channelID: Fixture.channel, lastSeq: 3, recovered: false)]))))
        XCTAssertEqual(
            server(#"{"re":"1","type":"unsubscribe","channel_ids":[]}"#),
            .result(re: "1", .unsubscribe(Response.Unsubscribe(channelIDs: []))))
        XCTAssertEqual(server(#"{"re":"1","type":"ping","time":1700000000000}"#), .result(re: "1", .ping(Response.Ping(time: 1_700_000_000_000))))
        XCTAssertEqual(server(#"{"re":"1","type":"logout"}"#), .result(re: "1", .logout))
        XCTAssertEqual(
            server(#"{"re":"1","type":"channels","channels":[{"channel_id":"\#(ch)","name":"g","role":"member","last_seq":0,"key_id":null,"membership_version":1}]}"#),
            .result(re: "1", .channels(Response.Channels(channels: [ChannelSummary(channelID: Fixture.channel, name: "g", role: .member, lastSeq: 0, keyID: nil, membershipVersion: 1)]))))
    }

    func testServerEventAndErrorLiterals() {
        let message = #""channel_id":"\#(ch)","seq":1,"sender_id":"\#(a)","key_id":"\#(k1)","iv":"\#(iv)","ciphertext":"\#(ct)","ts":1700000000,"received_at":1700000000001"#
        XCTAssertEqual(
            server(#"{"type":"event.message",\#(message)}"#),
            .event(
                .message(
                    MessageRecord(
                        channelID: Fixture.channel, seq: 1, senderID: Fixture.alice, keyID: Fixture.key1, iv: Array(0..<12),
                        ciphertext: [UInt8](repeating: 0, count: 16), ts: 1_700_000_000, receivedAt: 1_700_000_000_001))))
        XCTAssertEqual(
            server(#"{"type":"event.synced","channel_id":"\#(ch)","seq":0}"#),
            .event(.synced(Event.Synced(channelID: Fixture.channel, seq: 0))))
        XCTAssertEqual(
            server(#"{"type":"event.key","key_id":"\#(k2)","channel_id":"\#(ch)","creator_id":"\#(b)","previous_key_id":"\#(k1)","membership_version":2,"digest":"\#(d32)","sig":"AQID","created_at":1,"expires_at":2,"encrypted_key":"BAUG"}"#),
            .event(
                .key(
                    KeyRecord(
                        keyID: Fixture.key2, channelID: Fixture.channel, creatorID: Fixture.bob, previousKeyID: Fixture.key1,
                        membershipVersion: 2, digest: zero32, sig: [1, 2, 3], createdAt: 1, expiresAt: 2, encryptedKey: [4, 5, 6]))))
        let statement = #"{"version":1,"prev":"","ts":1,"owner_id":"\#(a)","members":["\#(a)","\#(c)"],"signer_id":"\#(a)","sig":"AQID"}"#
        XCTAssertEqual(
            server(#"{"type":"event.member","channel_id":"\#(ch)","user_id":"\#(c)","action":"added","by":"\#(a)","membership":\#(statement)}"#),
            .event(
                .member(
                    Event.Member(
                        channelID: Fixture.channel, userID: Fixture.carol, action: .added, by: Fixture.alice,
                        membership: MembershipStatement(
                            version: 1, prev: [], ts: 1, ownerID: Fixture.alice, members: [Fixture.alice, Fixture.carol],
                            signerID: Fixture.alice, sig: [1, 2, 3])))))
        XCTAssertEqual(
            server(#"{"re":null,"type":"error","code":"bad_request","message":"not JSON"}"#),
            .error(ErrorFrame(re: nil, code: .badRequest, message: "not JSON")))
        XCTAssertEqual(
            server(#"{"re":"1","type":"error","code":"key_expired","message":"m","current_key_id":null}"#),
            .error(ErrorFrame(re: "1", code: .keyExpired, message: "m", currentKeyID: nil)))
        XCTAssertEqual(
            server(#"{"re":"1","type":"error","code":"members_mismatch","message":"m","members":["\#(a)"],"membership_version":2}"#),
            .error(ErrorFrame(re: "1", code: .membersMismatch, message: "m", members: [Fixture.alice], membershipVersion: 2)))
        XCTAssertEqual(
            server(#"{"re":"1","type":"error","code":"rate_limited","message":"m","retry_after_ms":100}"#),
            .error(ErrorFrame(re: "1", code: .rateLimited, message: "m", retryAfterMs: 100)))
    }

    func testServerFrameDecoderRejectsWhatIsNotAFrame() {
        let bad = [
            #"{"re":"1","type":"nope"}"#,
            #"{"re":"1"}"#,
            #"{"type":"ping","time":1}"#,  // a result without re
            #"{"re":"1","type":"error","code":"teapot","message":"m"}"#,
            #"{"type":"event.synced","channel_id":"\#(ch)"}"#,
            #"[1]"#,
            #"{"re":"1","type":"ping","time":1.5}"#,
        ]
        for text in bad {
            XCTAssertThrowsError(try ServerFrame.decode(Array(text.utf8)), text)
        }
    }

    func testErrorCodesAreExactlyTheContractCodes() {
        let contract = [
            "bad_request", "unknown_type", "unauthenticated", "auth_failed", "forbidden", "not_member", "not_found",
            "invalid_username", "username_taken", "invalid_key", "challenge_failed", "key_conflict", "members_mismatch",
            "key_expired", "bad_timestamp", "too_large", "rate_limited", "unavailable", "internal",
        ]
        XCTAssertEqual(ErrorCode.allCases.map(\.rawValue), contract)
        XCTAssertEqual(
            RequestType.allCases.filter(\.allowedUnauthenticated).map(\.rawValue).sorted(),
            ["auth", "challenge", "login", "ping", "signup"])
    }
}
