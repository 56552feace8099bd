import Foundation
import ParleyProtocol
import ParleyServer
import ParleyStore
import ParleyTestSupport
import XCTest

/// A freshly migrated database with users, channels, members and keys made by plain SQL,
/// and a relay service to send `message` / `messages` through. One per test; used on the
/// test's thread (its connection is not shared).
final class MessageFixture {
    let connectionString: String
    let db: PostgresConnection
    let service: RelayService
    let nodeID = ID.random()

    init(configuration: RelayConfiguration = RelayConfiguration()) throws {
        connectionString = try TestDatabase.makeDatabase()
        db = try PostgresConnection(connectionString: connectionString)
        service = RelayService(configuration: configuration)
    }

    /// A new connection to the same database (for "readable elsewhere" checks and threads).
    func connect() throws -> PostgresConnection {
        try PostgresConnection(connectionString: connectionString)
    }

    func makeUser() throws -> ID {
        let id = ID.random()
        let name = "m" + String(id.string.replacingOccurrences(of: "-", with: "").prefix(20))
        try db.execute("""
            INSERT INTO users (id, username, public_key, key_fingerprint, passkey_hash) VALUES ($1, $2, $3, $4, $5)
            """, [.text(id.string), .text(name), .bytes(randomMessageBytes(64)), .bytes(randomMessageBytes(32)),
                  .bytes(randomMessageBytes(32))])
        return id
    }

    /// A channel owned by `owner` (a member with join cut 0), with a fresh key unless told.
    @discardableResult
    func makeChannel(owner: ID, withKey: Bool = true) throws -> (channel: ID, key: ID?) {
        let channel = ID.random()
        try db.execute("INSERT INTO channels (id, name, owner_id, membership_version) VALUES ($1, 'room', $2, 1)",
                       [.text(channel.string), .text(owner.string)])
        try addMember(owner, to: channel, joinSeq: 0, role: "owner")
        let key = withKey ? try rotateKey(channel, creator: owner) : nil
        return (channel, key)
    }

    func addMember(_ user: ID, to channel: ID, joinSeq: Int, role: String = "member") throws {
        try db.execute("""
            INSERT INTO channel_members (channel_id, user_id, role, join_seq) VALUES ($1, $2, $3, $4)
            """, [.text(channel.string), .text(user.string), .text(role), .int(joinSeq)])
    }

    func removeMember(_ user: ID, from channel: ID) throws {
        try db.execute("DELETE FROM channel_members WHERE channel_id = $1 AND user_id = $2",
                       [.text(channel.string), .text(user.string)])
    }

    /// A new newest key (successor of the current one), valid for `lifetime` seconds
    /// (negative: already expired).
    @discardableResult
    func rotateKey(_ channel: ID, creator: ID, lifetime: Int = 3600) throws -> ID {
        let key = ID.random()
        try db.execute("""
            INSERT INTO channel_keys (id, channel_id, creator_id, previous_key_id, membership_version, digest, sig, expires_at)
            SELECT $1, c.id, $3, c.current_key_id, 1, $4, $5, now() + make_interval(secs => $6)
            FROM channels c WHERE c.id = $2
            """, [.text(key.string), .text(channel.string), .text(creator.string), .bytes(randomMessageBytes(32)),
                  .bytes(randomMessageBytes(256)), .int(lifetime)])
        try db.execute("UPDATE channels SET current_key_id = $1 WHERE id = $2", [.text(key.string), .text(channel.string)])
        return key
    }

    func expireKey(_ key: ID) throws {
        try db.execute("UPDATE channel_keys SET expires_at = now() - interval '1 second' WHERE id = $1", [.text(key.string)])
    }

    /// `count` messages stored directly (seq `from`…), much faster than sending them.
    func storeMessages(_ channel: ID, sender: ID, key: ID, count: Int) throws {
        try db.execute("""
            INSERT INTO messages (channel_id, seq, sender_id, client_msg_id, key_id, iv, ciphertext, ts)
            SELECT $1::uuid, c.last_seq + g, $2::uuid, gen_random_uuid(), $3::uuid,
                   decode(lpad(to_hex(c.last_seq + g), 24, '0'), 'hex'), decode(repeat('ab', 16), 'hex'), 0
            FROM channels c, generate_series(1, $4::int) g WHERE c.id = $1::uuid
            """, [.text(channel.string), .text(sender.string), .text(key.string), .int(count)])
        try db.execute("UPDATE channels SET last_seq = last_seq + $2 WHERE id = $1", [.text(channel.string), .int(count)])
    }

    func context(_ user: ID?, connection: UInt64 = 1) -> RequestContext {
        RequestContext(connectionID: connection, nodeID: nodeID, userID: user)
    }

    func send(_ request: Request.Message, as user: ID, id: String = "m1", on connection: PostgresConnection? = nil) -> Outcome {
        service.handle(.message(request), id: id, context: context(user), on: connection ?? db)
    }

    func history(_ request: Request.Messages, as user: ID, id: String = "h1") -> Outcome {
        service.handle(.messages(request), id: id, context: context(user), on: db)
    }

    func count(_ sql: String, _ parameters: [SQLValue]) throws -> Int {
        try db.execute(sql, parameters).first?.int(0) ?? -1
    }
}

func randomMessageBytes(_ count: Int) -> [UInt8] {
    var generator = SystemRandomNumberGenerator()
    var bytes = [UInt8](repeating: 0, count: count)
    var index = 0
    while index < count {
        var word = generator.next() as UInt64
        for _ in 0..<8 where index < count {
            bytes[index] = UInt8(truncatingIfNeeded: word)
            word >>= 8
            index += 1
        }
    }
    return bytes
}

/// A `message` request with fresh iv and client_msg_id, `ts` = now unless given.
func makeMessageRequest(channel: ID, key: ID, ciphertextBytes: Int = 32, ts: Int? = nil, iv: [UInt8]? = nil,
                        clientMsgID: ID = ID.random()) -> Request.Message {
    Request.Message(channelID: channel, keyID: key, iv: iv ?? randomMessageBytes(12),
                    ciphertext: randomMessageBytes(ciphertextBytes), ts: ts ?? Int(Date().timeIntervalSince1970),
                    clientMsgID: clientMsgID)
}

struct MessageTestFailure: Error, CustomStringConvertible {
    var description: String
}

/// The `message` result of an outcome, or a thrown failure naming what came instead.
func messageResult(_ outcome: Outcome) throws -> Response.Message {
    let frame = try ServerFrame.decode(outcome.reply)
    guard case .result(_, .message(let result)) = frame else {
        throw MessageTestFailure(description: "expected a message result, got \(String(decoding: outcome.reply, as: UTF8.self))")
    }
    return result
}

func historyResult(_ outcome: Outcome) throws -> Response.Messages {
    let frame = try ServerFrame.decode(outcome.reply)
    guard case .result(_, .messages(let result)) = frame else {
        throw MessageTestFailure(description: "expected a messages result, got \(String(decoding: outcome.reply, as: UTF8.self))")
    }
    return result
}

func messageTestError(_ outcome: Outcome) throws -> ErrorFrame {
    let frame = try ServerFrame.decode(outcome.reply)
    guard case .error(let error) = frame else {
        throw MessageTestFailure(description: "expected an error, got \(String(decoding: outcome.reply, as: UTF8.self))")
    }
    return error
}

/// Results gathered from several threads.
final class MessageThreadResults<Element: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [Element] = []   // guarded by lock

    func append(_ item: Element) { lock.withLock { items.append(item) } }
    var all: [Element] { lock.withLock { items } }
}

/// Lets threads that connected first wait for the others, so their requests overlap.
final class MessageStartLine: @unchecked Sendable {
    private let condition = NSCondition()
    private var waiting: Int   // guarded by condition

    init(runners: Int) { waiting = runners }

    func arriveAndWait() {
        condition.lock()
        waiting -= 1
        if waiting <= 0 { condition.broadcast() }
        while waiting > 0 { condition.wait() }
        condition.unlock()
    }
}

/// Runs `body(index)` on `count` threads of their own and waits for all of them.
func runOnMessageThreads(_ count: Int, timeout: TimeInterval = 120, _ body: @escaping @Sendable (Int) -> Void) -> Bool {
    let group = DispatchGroup()
    for index in 0..<count {
        group.enter()
        let thread = Thread {
            body(index)
            group.leave()
        }
        thread.start()
    }
    return group.wait(timeout: .now() + timeout) == .success
}
