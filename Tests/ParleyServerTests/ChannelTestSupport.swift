import Foundation
import ParleyCrypto
import ParleyProtocol
@testable import ParleyServer
import ParleyStore
import ParleyTestSupport
import XCTest

/// An account of the channel tests, with the private key that signs for it.
struct ChannelTestUser {
    let id: ID
    let username: String
    let key: RSAPrivateKey
}

/// RSA key pairs are slow to make, so the channel tests share a few, generated once.
enum ChannelTestKeys {
    static let pool: [RSAPrivateKey] = (0..<6).compactMap { _ in try? RSAPrivateKey(generating: .bits2048) }
}

/// A relay over a fresh database of its own, with helpers that sign for real.
/// Used from the test's thread only (its connection is not shared).
final class ChannelTestRelay {
    let connectionString: String
    let db: PostgresConnection
    let service: RelayService
    let nodeID = ID.random()
    private var usersMade = 0
    private var requestsMade = 0

    init(configuration: RelayConfiguration = RelayConfiguration()) throws {
        connectionString = try TestDatabase.makeDatabase()
        db = try PostgresConnection(connectionString: connectionString)
        service = RelayService(configuration: configuration)
    }

    var now: Int { Int(Date().timeIntervalSince1970) }
    var nowMillis: Int { Int(Date().timeIntervalSince1970 * 1000) }

    /// A user stored directly, each with another key of the pool (so up to six per test
    /// have distinct keys); `id` lets a test choose the order of ids.
    func makeUser(id: ID = ID.random()) throws -> ChannelTestUser {
        let pool = ChannelTestKeys.pool
        guard !pool.isEmpty, let uuid = id.uuid else { throw ChannelTestFailure("no test keys") }
        let key = pool[usersMade % pool.count]
        usersMade += 1
        let username = "ch_" + String(id.string.prefix(8)) + "_\(usersMade)"
        try Queries.insertUser(
            UserRow(id: uuid, username: username, publicKey: key.publicKey.spkiDER,
                    keyFingerprint: key.publicKey.fingerprint),
            passkeyHash: SHA256.hash(Array(username.utf8)), on: db)
        return ChannelTestUser(id: id, username: username, key: key)
    }

    /// Runs a request as `user` (or unauthenticated) on this relay's connection.
    func send(_ request: Request, as user: ChannelTestUser?, on connection: PostgresConnection? = nil) -> Outcome {
        requestsMade += 1
        return service.handle(
            request, id: "r\(requestsMade)",
            context: RequestContext(connectionID: 1, nodeID: nodeID, userID: user?.id), on: connection ?? db)
    }

    // MARK: Signing

    /// A statement signed for real by `signer` (or with `sig` when given).
    func statement(
        channel: ID, version: Int, prev: [UInt8], ts: Int? = nil, owner: ID?, members: [ID],
        signer: ChannelTestUser, sig: [UInt8]? = nil
    ) throws -> MembershipStatement {
        var statement = MembershipStatement(
            version: version, prev: prev, ts: ts ?? now, ownerID: owner, members: members, signerID: signer.id, sig: [])
        statement.sig = try sig ?? signer.key.signature(for: statement.signedText(channelID: channel))
        return statement
    }

    static func textHash(_ statement: MembershipStatement, channel: ID) -> [UInt8] {
        SHA256.hash(statement.signedText(channelID: channel))
    }

    /// The statement after `previous` with `members`, owner unchanged unless given.
    func next(
        _ previous: MembershipStatement, channel: ID, members: [ID], owner: ID?? = .none,
        signer: ChannelTestUser, ts: Int? = nil
    ) throws -> MembershipStatement {
        try statement(
            channel: channel, version: previous.version + 1, prev: Self.textHash(previous, channel: channel),
            ts: ts, owner: owner ?? previous.ownerID, members: members, signer: signer)
    }

    // MARK: Steps that must succeed

    /// Creates a channel owned by `owner` with `others`; returns its id and statement v1.
    func createChannel(owner: ChannelTestUser, others: [ChannelTestUser] = [], name: String = "general")
        throws -> (ID, MembershipStatement)
    {
        let channel = ID.random()
        let v1 = try statement(channel: channel, version: 1, prev: [], owner: owner.id,
                               members: [owner.id] + others.map(\.id), signer: owner)
        _ = try result(send(.channelCreate(.init(channelID: channel, name: name, membership: v1)), as: owner))
        return (channel, v1)
    }

    /// `previous` + `user`, signed by `signer`, applied.
    @discardableResult
    func add(_ user: ChannelTestUser, to channel: ID, after previous: MembershipStatement, signer: ChannelTestUser)
        throws -> MembershipStatement
    {
        let next = try next(previous, channel: channel, members: previous.members + [user.id], signer: signer)
        _ = try result(send(.channelAdd(.init(channelID: channel, userID: user.id, membership: next)), as: signer))
        return next
    }

    /// A key record for the current members, signed by `creator`: the request and the raw key.
    func keyRequest(
        channel: ID, previous: ID?, version: Int, recipients: [ChannelTestUser], creator: ChannelTestUser,
        keyID: ID = ID.random()
    ) throws -> (Request.Keys, [UInt8]) {
        let raw = try SecureRandom.bytes(count: 32)
        let digest = SHA256.hash(raw)
        let text = SignedText.keyRecord(channelID: channel, keyID: keyID, previousKeyID: previous,
                                        membershipVersion: version, digest: digest)
        let copies = try recipients.map { WrappedKey(userID: $0.id, encryptedKey: try $0.key.publicKey.wrap(raw)) }
        return (Request.Keys(channelID: channel, keyID: keyID, previousKeyID: previous, membershipVersion: version,
                             digest: digest, sig: try creator.key.signature(for: text), encryptedKeys: copies), raw)
    }

    /// Rotates and returns the new key id.
    @discardableResult
    func rotate(channel: ID, previous: ID?, version: Int, recipients: [ChannelTestUser], creator: ChannelTestUser)
        throws -> ID
    {
        let (request, _) = try keyRequest(channel: channel, previous: previous, version: version,
                                          recipients: recipients, creator: creator)
        _ = try result(send(.keys(request), as: creator))
        return request.keyID
    }

    func fetchKey(channel: ID, keyID: ID? = nil, as user: ChannelTestUser) throws -> Response.Key {
        guard case .key(let key) = try result(send(.key(.init(channelID: channel, keyID: keyID)), as: user)) else {
            throw ChannelTestFailure("not a key result")
        }
        return key
    }

    // MARK: Reading outcomes

    /// The success response of an outcome; throws (failing the test) on an error frame.
    func result(_ outcome: Outcome) throws -> Response {
        switch try ServerFrame.decode(outcome.reply) {
        case .result(_, let response): return response
        case .error(let error): throw ChannelTestFailure("expected a result, got \(error.code.rawValue): \(error.message)")
        case .event: throw ChannelTestFailure("expected a result, got an event")
        }
    }

    /// The error frame of an outcome; throws when it was a success.
    func errorFrame(_ outcome: Outcome) throws -> ErrorFrame {
        guard case .error(let error) = try ServerFrame.decode(outcome.reply) else {
            throw ChannelTestFailure("expected an error, got \(String(decoding: outcome.reply, as: UTF8.self))")
        }
        return error
    }

    /// Asserts that `outcome` is an error with `code`, and returns it.
    @discardableResult
    func expect(_ code: ErrorCode, _ outcome: Outcome, file: StaticString = #filePath, line: UInt = #line)
        throws -> ErrorFrame
    {
        let error = try errorFrame(outcome)
        XCTAssertEqual(error.code, code, "message: \(error.message)", file: file, line: line)
        XCTAssertTrue(outcome.effects.isEmpty, "a refused request has no effects", file: file, line: line)
        return error
    }
}

/// A failed expectation inside a channel test helper.
struct ChannelTestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

