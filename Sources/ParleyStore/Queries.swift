import Foundation

/// The rows the relay reads back, in the store's own terms (UUIDs, bytes, unix
/// milliseconds). The relay maps them to protocol frames.
public struct UserRow: Sendable, Equatable {
    public var id: UUID
    public var username: String
    public var publicKey: [UInt8]
    public var keyFingerprint: [UInt8]
    public var createdAt: Int64   // unix ms

    public init(id: UUID, username: String, publicKey: [UInt8], keyFingerprint: [UInt8], createdAt: Int64 = 0) {
        self.id = id
        self.username = username
        self.publicKey = publicKey
        self.keyFingerprint = keyFingerprint
        self.createdAt = createdAt
    }
}

public struct MessageRow: Sendable, Equatable {
    public var channelID: UUID
    public var seq: Int64
    public var senderID: UUID
    public var clientMessageID: UUID
    public var keyID: UUID
    public var iv: [UInt8]
    public var ciphertext: [UInt8]
    public var ts: Int64          // client's unix seconds
    public var receivedAt: Int64  // unix ms

    public init(channelID: UUID, seq: Int64 = 0, senderID: UUID, clientMessageID: UUID, keyID: UUID,
                iv: [UInt8], ciphertext: [UInt8], ts: Int64, receivedAt: Int64 = 0) {
        self.channelID = channelID
        self.seq = seq
        self.senderID = senderID
        self.clientMessageID = clientMessageID
        self.keyID = keyID
        self.iv = iv
        self.ciphertext = ciphertext
        self.ts = ts
        self.receivedAt = receivedAt
    }
}

/// The store's queries, each a prepared statement with bind parameters. Every function
/// runs on the connection it is given; the caller picks the transaction boundaries.
public enum Queries {
    /// Server times leave PostgreSQL as unix milliseconds, the wire's unit.
    static let millis = "(extract(epoch FROM %@) * 1000)::bigint"

    static func ms(_ column: String) -> String { millis.replacingOccurrences(of: "%@", with: column) }

    // MARK: Users and sessions

    static let insertUser = PreparedStatement("insert_user", """
        INSERT INTO users (id, username, public_key, key_fingerprint, passkey_hash)
        VALUES ($1, $2, $3, $4, $5)
        RETURNING \(ms("created_at"))
        """)

    /// Creates an account; throws a unique violation (`users_username_key`) when the name is taken.
    @discardableResult
    public static func insertUser(_ user: UserRow, passkeyHash: [UInt8], on connection: PostgresConnection) throws -> UserRow {
        let result = try connection.execute(insertUser, [
            .uuid(user.id), .text(user.username), .bytes(user.publicKey), .bytes(user.keyFingerprint), .bytes(passkeyHash),
        ])
        var stored = user
        stored.createdAt = try result.first?.int64(0) ?? 0
        return stored
    }

    static let userColumns = "id, username, public_key, key_fingerprint, \(ms("created_at"))"

    static func userRow(_ row: Row) throws -> UserRow {
        UserRow(id: try row.uuid(0), username: try row.string(1), publicKey: try row.bytes(2),
                keyFingerprint: try row.bytes(3), createdAt: try row.int64(4))
    }

    static let userByName = PreparedStatement("user_by_name", "SELECT \(userColumns) FROM users WHERE username = $1")
    static let userByID = PreparedStatement("user_by_id", "SELECT \(userColumns) FROM users WHERE id = $1")

    public static func user(named username: String, on connection: PostgresConnection) throws -> UserRow? {
        try connection.execute(userByName, [.text(username)]).first.map(userRow)
    }

    public static func user(id: UUID, on connection: PostgresConnection) throws -> UserRow? {
        try connection.execute(userByID, [.uuid(id)]).first.map(userRow)
    }

    static let passkeyHash = PreparedStatement("passkey_hash", "SELECT id, passkey_hash FROM users WHERE username = $1")

    /// The account id and stored passkey hash, for a constant-time comparison by the caller.
    public static func passkeyHash(username: String, on connection: PostgresConnection) throws -> (UUID, [UInt8])? {
        guard let row = try connection.execute(passkeyHash, [.text(username)]).first else { return nil }
        return (try row.uuid(0), try row.bytes(1))
    }

    static let insertSession = PreparedStatement("insert_session", """
        INSERT INTO sessions (token_hash, user_id, expires_at)
        VALUES ($1, $2, now() + make_interval(secs => $3))
        RETURNING \(ms("expires_at"))
        """)

    /// Stores a session by the hash of its token; returns its expiry (unix ms).
    public static func insertSession(tokenHash: [UInt8], userID: UUID, lifetimeSeconds: Int,
                                     on connection: PostgresConnection) throws -> Int64 {
        try connection.execute(insertSession, [.bytes(tokenHash), .uuid(userID), .int(lifetimeSeconds)]).first?.int64(0) ?? 0
    }

    static let sessionLookup = PreparedStatement("session_lookup", """
        SELECT u.id, u.username, u.public_key, u.key_fingerprint, \(ms("u.created_at")), \(ms("s.expires_at"))
        FROM sessions s JOIN users u ON u.id = s.user_id
        WHERE s.token_hash = $1 AND s.expires_at > now()
        """)

    /// The user of an unexpired session and the session's expiry (unix ms).
    public static func session(tokenHash: [UInt8], on connection: PostgresConnection) throws -> (UserRow, Int64)? {
        guard let row = try connection.execute(sessionLookup, [.bytes(tokenHash)]).first else { return nil }
        return (try userRow(row), try row.int64(5))
    }

    static let deleteSession = PreparedStatement("delete_session", "DELETE FROM sessions WHERE token_hash = $1")

    /// Ends a session everywhere; true when it existed.
    @discardableResult
    public static func deleteSession(tokenHash: [UInt8], on connection: PostgresConnection) throws -> Bool {
        try connection.execute(deleteSession, [.bytes(tokenHash)]).affectedRows > 0
    }

    // MARK: Messages

    static let nextSeq = PreparedStatement("next_seq", """
        UPDATE channels SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq
        """)

    static let insertMessage = PreparedStatement("insert_message", """
        INSERT INTO messages (channel_id, seq, sender_id, client_msg_id, key_id, iv, ciphertext, ts)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        RETURNING \(ms("received_at"))
        """)

    /// Appends a message: takes the next seq under the channel's row lock and inserts the
    /// row. Run it inside a transaction: the lock is held until commit, so commit order is
    /// seq order and a rolled-back insert leaves no gap. Throws a unique violation on a
    /// repeated `(sender, client_msg_id)` (`messages_idempotent`) or `(key_id, iv)`
    /// (`messages_iv_once`); returns nil when the channel does not exist.
    public static func appendMessage(_ message: MessageRow, on connection: PostgresConnection) throws -> MessageRow? {
        guard let seq = try connection.execute(nextSeq, [.uuid(message.channelID)]).first?.int64(0) else { return nil }
        let result = try connection.execute(insertMessage, [
            .uuid(message.channelID), .integer(seq), .uuid(message.senderID), .uuid(message.clientMessageID),
            .uuid(message.keyID), .bytes(message.iv), .bytes(message.ciphertext), .integer(message.ts),
        ])
        var stored = message
        stored.seq = seq
        stored.receivedAt = try result.first?.int64(0) ?? 0
        return stored
    }

    static let messagesAfter = PreparedStatement("messages_after", """
        SELECT channel_id, seq, sender_id, client_msg_id, key_id, iv, ciphertext, ts, \(ms("received_at"))
        FROM messages WHERE channel_id = $1 AND seq > $2 ORDER BY seq LIMIT $3
        """)

    /// Up to `limit` messages of a channel with seq above `after`, ascending.
    public static func messages(channelID: UUID, after: Int64, limit: Int, on connection: PostgresConnection) throws -> [MessageRow] {
        try connection.execute(messagesAfter, [.uuid(channelID), .integer(after), .int(limit)]).rows.map { row in
            MessageRow(channelID: try row.uuid(0), seq: try row.int64(1), senderID: try row.uuid(2),
                       clientMessageID: try row.uuid(3), keyID: try row.uuid(4), iv: try row.bytes(5),
                       ciphertext: try row.bytes(6), ts: try row.int64(7), receivedAt: try row.int64(8))
        }
    }

    static let lastSeq = PreparedStatement("last_seq", "SELECT last_seq FROM channels WHERE id = $1")

    public static func lastSeq(channelID: UUID, on connection: PostgresConnection) throws -> Int64? {
        try connection.execute(lastSeq, [.uuid(channelID)]).first?.int64(0)
    }
}
