import Foundation
import ParleyProtocol
import ParleyStore

/// The challenge an answer names, read under its row lock (`SELECT … FOR UPDATE`).
/// Only a challenge the asking connection may still answer is ever returned.
struct PendingChallenge {
    enum Purpose {
        /// Create this account when answered.
        case signup(username: String, publicKey: [UInt8])
        /// Sign in this existing account.
        case login(userID: UUID)
    }

    var purpose: Purpose
    /// SHA-256 of the expected answer (itself SHA-256 of prefix and secret).
    var answerHash: [UInt8]
}

/// The SQL of the account handlers that `ParleyStore.Queries` does not already have.
/// Runs on the worker thread, on the handler's connection; every value is a bind parameter.
extension Handler {
    static let insertChallenge = PreparedStatement("account_insert_challenge", """
        INSERT INTO challenges (id, purpose, user_id, username, public_key, answer_hash, expires_at, owner_tag)
        VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7), $8)
        RETURNING (extract(epoch FROM expires_at) * 1000)::bigint
        """)

    /// The conditions live in the WHERE clause on purpose: under READ COMMITTED a second
    /// answer that waited for the row lock re-checks them against the committed row, so it
    /// sees `used_at` set by the first and gets no row. A foreign owner tag matches no row,
    /// so it neither locks nor uses up the challenge.
    static let lockChallenge = PreparedStatement("account_lock_challenge", """
        SELECT purpose, user_id, username, public_key, answer_hash
        FROM challenges
        WHERE id = $1 AND owner_tag = $2 AND used_at IS NULL AND expires_at > now()
        FOR UPDATE
        """)

    static let useChallenge = PreparedStatement("account_use_challenge", """
        UPDATE challenges SET used_at = now() WHERE id = $1
        """)

    /// A taken name inserts nothing (and returns no row) instead of failing the statement,
    /// so the surrounding transaction can still commit the used-up challenge.
    static let insertUserUnlessTaken = PreparedStatement("account_insert_user_unless_taken", """
        INSERT INTO users (id, username, public_key, key_fingerprint, passkey_hash)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (username) DO NOTHING
        RETURNING (extract(epoch FROM created_at) * 1000)::bigint
        """)

    /// Stores a challenge for this connection; returns its expiry in unix milliseconds.
    func storeChallenge(id: ID, purpose: PendingChallenge.Purpose, answerHash: [UInt8]) throws -> Int {
        let parameters: [SQLValue]
        switch purpose {
        case .signup(let username, let publicKey):
            parameters = [.id(id), .text("signup"), .null, .text(username), .bytes(publicKey)]
        case .login(let userID):
            parameters = [.id(id), .text("login"), .uuid(userID), .null, .null]
        }
        let result = try db.execute(Self.insertChallenge, parameters + [
            .bytes(answerHash), .int(configuration.challengeTTLSeconds), .text(context.connectionTag),
        ])
        guard let row = result.first else {
            throw StoreError(.decodingFailed, detail: "challenge insert returned no row")
        }
        return try row.int(0)
    }

    /// Locks the challenge `id` when this connection may answer it: not used, not expired,
    /// asked for by this connection. Call inside a transaction.
    func lockChallenge(_ id: ID) throws -> PendingChallenge? {
        guard let row = try db.execute(Self.lockChallenge, [.id(id), .text(context.connectionTag)]).first else {
            return nil
        }
        let purpose: PendingChallenge.Purpose
        switch try row.string(0) {
        case "signup":
            purpose = .signup(username: try row.string(2), publicKey: try row.bytes(3))
        case "login":
            purpose = .login(userID: try row.uuid(1))
        default:
            throw StoreError(.decodingFailed, detail: "challenge has an unknown purpose")
        }
        return PendingChallenge(purpose: purpose, answerHash: try row.bytes(4))
    }

    func useChallenge(_ id: ID) throws {
        try db.execute(Self.useChallenge, [.id(id)])
    }

    /// Creates the account unless its name was taken meanwhile (then nil).
    func insertUserUnlessTaken(_ user: UserRow, passkeyHash: [UInt8]) throws -> UserRow? {
        let result = try db.execute(Self.insertUserUnlessTaken, [
            .uuid(user.id), .text(user.username), .bytes(user.publicKey), .bytes(user.keyFingerprint),
            .bytes(passkeyHash),
        ])
        guard let row = result.first else { return nil }
        var stored = user
        stored.createdAt = try row.int64(0)
        return stored
    }
}
