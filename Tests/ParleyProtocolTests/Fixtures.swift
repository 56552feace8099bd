import XCTest

@testable import ParleyProtocol

/// Shared sample values. Ids are fixed so that texts and orders are predictable.
enum Fixture {
    static func id(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> ID {
        guard let id = ID(text) else {
            XCTFail("bad fixture id \(text)", file: file, line: line)
            return ID(UUIDZero.value)
        }
        return id
    }

    enum UUIDZero {
        static let value = Foundation.UUID(uuid: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    }

    static let alice = id("0a1b2c3d-0000-4000-8000-00000000000a")
    static let bob = id("0b1b2c3d-0000-4000-8000-00000000000b")
    static let carol = id("0c1b2c3d-0000-4000-8000-00000000000c")
    static let channel = id("c0000000-1111-4222-8333-444455556666")
    static let key1 = id("4b000000-0000-4000-8000-000000000001")
    static let key2 = id("4b000000-0000-4000-8000-000000000002")
    static let clientMsg = id("9f000000-0000-4000-8000-0000000000ff")
    static let challenge = id("cc000000-0000-4000-8000-000000000001")

    static func bytes(_ count: Int, _ seed: UInt8 = 1) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) }
    }

    static let statementV1 = MembershipStatement(
        version: 1, prev: [], ts: 1_700_000_000, ownerID: alice, members: [bob, alice],
        signerID: alice, sig: bytes(256, 7))

    static let statementV2 = MembershipStatement(
        version: 2, prev: bytes(32, 3), ts: 1_700_000_100, ownerID: alice, members: [carol, alice, bob],
        signerID: alice, sig: bytes(384, 9))

    static let closingStatement = MembershipStatement(
        version: 3, prev: bytes(32, 5), ts: 1_700_000_200, ownerID: nil, members: [],
        signerID: alice, sig: bytes(256, 11))

    static let keyRecord = KeyRecord(
        keyID: key2, channelID: channel, creatorID: bob, previousKeyID: key1, membershipVersion: 2,
        digest: bytes(32, 13), sig: bytes(256, 17), createdAt: 1_700_000_000_123,
        expiresAt: 1_700_003_600_123, encryptedKey: bytes(256, 19))

    static let firstKeyRecordWithoutCopy = KeyRecord(
        keyID: key1, channelID: channel, creatorID: alice, previousKeyID: nil, membershipVersion: 1,
        digest: bytes(32, 23), sig: bytes(256, 29), createdAt: 1, expiresAt: 2, encryptedKey: nil)

    static let messageRecord = MessageRecord(
        channelID: channel, seq: 42, senderID: alice, keyID: key2, iv: bytes(12, 31),
        ciphertext: bytes(40, 37), ts: 1_700_000_050, receivedAt: 1_700_000_050_999)

    static let member = Member(
        userID: alice, username: "alice", publicKey: bytes(294, 41), role: .owner, joinedAt: 1_700_000_000_000)

    /// One request of every type.
    static let requests: [Request] = [
        .signup(Request.Signup(username: "alice", publicKeyDER: bytes(294))),
        .login(Request.Login(username: "alice", passkey: "x4PmY2-_abc")),
        .challenge(Request.Challenge(challengeID: challenge, answer: bytes(32))),
        .auth(Request.Auth(session: "c2Vzc2lvbg")),
        .logout,
        .user(.username("bob")),
        .user(.userID(bob)),
        .channelCreate(Request.ChannelCreate(channelID: channel, name: "général 🎉", membership: statementV1)),
        .channels,
        .channelMembers(Request.ChannelMembers(channelID: channel)),
        .channelMembership(Request.ChannelMembership(channelID: channel)),
        .channelMembership(Request.ChannelMembership(channelID: channel, afterVersion: 1)),
        .channelAdd(Request.MembershipChange(channelID: channel, userID: carol, membership: statementV2)),
        .channelRemove(Request.MembershipChange(channelID: channel, userID: alice, membership: closingStatement)),
        .key(Request.Key(channelID: channel)),
        .key(Request.Key(channelID: channel, keyID: key1)),
        .keys(
            Request.Keys(
                channelID: channel, keyID: key2, previousKeyID: key1, membershipVersion: 2, digest: bytes(32),
                sig: bytes(256),
                encryptedKeys: [
                    WrappedKey(userID: alice, encryptedKey: bytes(256, 2)),
                    WrappedKey(userID: bob, encryptedKey: bytes(384, 3)),
                ])),
        .keys(
            Request.Keys(
                channelID: channel, keyID: key1, previousKeyID: nil, membershipVersion: 1, digest: bytes(32),
                sig: bytes(256), encryptedKeys: [])),
        .message(
            Request.Message(
                channelID: channel, keyID: key2, iv: bytes(12), ciphertext: bytes(16), ts: 1_700_000_000,
                clientMsgID: clientMsg)),
        .messages(Request.Messages(channelID: channel)),
        .messages(Request.Messages(channelID: channel, after: 0, before: 100, limit: 200)),
        .subscribe(
            Request.Subscribe(channels: [
                Request.SubscribeChannel(channelID: channel, after: 41),
                Request.SubscribeChannel(channelID: key1),
            ])),
        .unsubscribe(Request.Unsubscribe(channelIDs: [channel, key1])),
        .ping,
    ]

    /// One result of every type.
    static let responses: [Response] = [
        .signup(Response.ChallengeIssued(challengeID: challenge, challenge: bytes(256), expiresAt: 1_700_000_300_000)),
        .login(Response.ChallengeIssued(challengeID: challenge, challenge: bytes(512), expiresAt: 5)),
        .challenge(
            Response.Challenge(
                userID: alice, username: "alice", session: "c2Vzc2lvbg", sessionExpiresAt: 1_702_592_000_000,
                passkey: "cGFzc2tleQ")),
        .challenge(
            Response.Challenge(userID: alice, username: "alice", session: "s", sessionExpiresAt: 1)),
        .auth(Response.Auth(userID: bob, username: "bob", sessionExpiresAt: 9_007_199_254_740_991)),
        .logout,
        .user(Response.User(userID: bob, username: "bob", publicKey: bytes(294), createdAt: 1_700_000_000_000)),
        .channelCreate(Response.ChannelCreate(channelID: channel, name: "general", members: [member])),
        .channels(
            Response.Channels(channels: [
                ChannelSummary(
                    channelID: channel, name: "general", role: .owner, lastSeq: 42, keyID: key2, membershipVersion: 2),
                ChannelSummary(
                    channelID: key1, name: "empty", role: .member, lastSeq: 0, keyID: nil, membershipVersion: 1),
            ])),
        .channelMembers(Response.ChannelMembers(members: [member], membershipVersion: 3)),
        .channelMembership(Response.ChannelMembership(statements: [statementV1, statementV2, closingStatement])),
        .channelAdd(Response.MembershipChanged(channelID: channel, userID: carol, membershipVersion: 2)),
        .channelRemove(Response.MembershipChanged(channelID: channel, userID: bob, membershipVersion: 3)),
        .key(Response.Key(key: keyRecord, rotationRequired: false)),
        .key(Response.Key(key: firstKeyRecordWithoutCopy, rotationRequired: true)),
        .key(Response.Key(key: nil, rotationRequired: true)),
        .keys(Response.Keys(keyID: key2, createdAt: 10, expiresAt: 3_600_010)),
        .message(Response.Message(channelID: channel, seq: 1, receivedAt: 1_700_000_000_001, duplicate: false)),
        .message(Response.Message(channelID: channel, seq: 1, receivedAt: 1_700_000_000_001, duplicate: true)),
        .messages(Response.Messages(messages: [messageRecord, messageRecord], hasMore: true)),
        .messages(Response.Messages(messages: [], hasMore: false)),
        .subscribe(
            Response.Subscribe(channels: [
                Response.SubscribedChannel(channelID: channel, lastSeq: 42, recovered: true),
                Response.SubscribedChannel(channelID: key1, lastSeq: 5000, recovered: false),
            ])),
        .unsubscribe(Response.Unsubscribe(channelIDs: [channel])),
        .ping(Response.Ping(time: 1_700_000_000_000)),
    ]

    static let events: [Event] = [
        .message(messageRecord),
        .synced(Event.Synced(channelID: channel, seq: 42)),
        .key(keyRecord),
        .key(firstKeyRecordWithoutCopy),
        .member(Event.Member(channelID: channel, userID: carol, action: .added, by: alice, membership: statementV2)),
        .member(Event.Member(channelID: channel, userID: alice, action: .removed, by: alice, membership: closingStatement)),
    ]

    static let errors: [ErrorFrame] = [
        ErrorFrame(re: "r1", code: .badRequest, message: "bad field iv: not base64"),
        ErrorFrame(re: nil, code: .badRequest, message: "not JSON"),
        ErrorFrame(re: "r2", code: .rateLimited, message: "slow down", retryAfterMs: 250),
        ErrorFrame(re: "r3", code: .keyConflict, message: "newer key", currentKeyID: key2),
        ErrorFrame(re: "r4", code: .keyExpired, message: "no key", currentKeyID: nil),
        ErrorFrame.membersMismatch(re: "r5", members: [carol, alice], membershipVersion: 4),
        ErrorFrame(re: "r6", code: .internal, message: "oops", retryAfterMs: 1000),
    ] + ErrorCode.allCases.map { ErrorFrame(re: "all", code: $0, message: $0.rawValue) }
}

extension Array where Element == UInt8 {
    /// The UTF-8 bytes of a string literal.
    init(utf8 text: String) { self = Array(text.utf8) }
}

/// Parses JSON text and returns its top-level object, failing the test otherwise.
func parseObject(_ bytes: [UInt8], file: StaticString = #filePath, line: UInt = #line) -> JSONObject {
    do {
        if case .object(let object) = try JSONParser.parse(bytes) { return object }
        XCTFail("not an object", file: file, line: line)
    } catch {
        XCTFail("parse failed: \(error)", file: file, line: line)
    }
    return JSONObject()
}
