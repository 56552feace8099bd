import Foundation
import ParleyCrypto
import ParleyProtocol
import ParleyStore

// Channel keys (§6, §10 "Keys"). Runs on database worker threads.
//
// A key is stored compare-and-set: under the channel's row lock `previous_key_id` must be
// the newest key; and the insert itself relies on `channel_keys_one_successor`, so even
// two transactions that both passed that check (say, a lock taken by another path) cannot
// both store a successor of the same key — the loser gets `key_conflict` with the winner.
//
// Key times are stored truncated to whole milliseconds, so `expires_at` on the wire is the
// exact instant the relay treats the key as expired (`now >= expires_at`).

/// The SQL of the key handlers: prepared statements, values always bound.
enum KeySQL {
    static let keyColumns = """
        k.id, k.channel_id, k.creator_id, k.previous_key_id, k.membership_version, k.digest, k.sig,
        \(ChannelSQL.millis("k.created_at")), \(ChannelSQL.millis("k.expires_at")), kc.encrypted_key, k.expires_at <= now()
        """

    /// The channel's newest key with the requester's copy, if any.
    static let newestKey = PreparedStatement("chk_newest", """
        SELECT \(keyColumns)
        FROM channels c JOIN channel_keys k ON k.id = c.current_key_id
        LEFT JOIN channel_key_copies kc ON kc.key_id = k.id AND kc.user_id = $2
        WHERE c.id = $1
        """)

    /// A key of the channel of which the requester holds a copy.
    static let keyWithCopy = PreparedStatement("chk_with_copy", """
        SELECT \(keyColumns)
        FROM channel_keys k JOIN channel_key_copies kc ON kc.key_id = k.id AND kc.user_id = $3
        WHERE k.id = $2 AND k.channel_id = $1
        """)

    static let memberKeys = PreparedStatement("chk_member_keys", """
        SELECT m.user_id, u.public_key FROM channel_members m JOIN users u ON u.id = m.user_id
        WHERE m.channel_id = $1 ORDER BY m.user_id
        """)

    /// Stores the record unless the predecessor already has a successor (then no row).
    static let insertKey = PreparedStatement("chk_insert", """
        INSERT INTO channel_keys
            (id, channel_id, creator_id, previous_key_id, membership_version, digest, sig, created_at, expires_at, at_seq)
        VALUES ($1, $2, $3, $4, $5, $6, $7, date_trunc('milliseconds', now()),
                date_trunc('milliseconds', now()) + $8::bigint * interval '1 second', $9)
        ON CONFLICT ON CONSTRAINT channel_keys_one_successor DO NOTHING
        RETURNING \(ChannelSQL.millis("created_at")), \(ChannelSQL.millis("expires_at"))
        """)

    static let successorKey = PreparedStatement("chk_successor", """
        SELECT id FROM channel_keys WHERE channel_id = $1 AND previous_key_id IS NOT DISTINCT FROM $2::uuid
        """)

    static let insertKeyCopies = PreparedStatement("chk_insert_copies", """
        INSERT INTO channel_key_copies (key_id, user_id, encrypted_key)
        SELECT $1, u, k FROM unnest($2::uuid[], $3::bytea[]) AS t(u, k)
        """)

    static let setCurrentKey = PreparedStatement("chk_set_current", "UPDATE channels SET current_key_id = $2 WHERE id = $1")

    /// The text form of a bytea (`\x` and hex digits), for an element of a bytea[] parameter.
    static func byteaLiteral(_ bytes: [UInt8]) -> String {
        let digits: [UInt8] = Array("0123456789abcdef".utf8)
        var text = [UInt8](#"\x"#.utf8)
        text.reserveCapacity(2 + bytes.count * 2)
        for byte in bytes {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: text, as: UTF8.self)
    }
}

extension Handler {
    // MARK: - Handlers

    func key(_ request: Request.Key) throws -> Outcome {
        let user = try userID
        _ = try requireMember(request.channelID)
        let newest = try db.execute(KeySQL.newestKey, [.id(request.channelID), .id(user)]).first
        // rotation_required always describes the newest key: none, expired, or no copy.
        let rotationRequired = try newest.map { row in try row.bool(10) || row.isNull(9) } ?? true
        guard let keyID = request.keyID else {
            return ok(.key(.init(key: try newest.map(Self.keyRecord), rotationRequired: rotationRequired)))
        }
        guard let row = try db.execute(KeySQL.keyWithCopy, [.id(request.channelID), .id(keyID), .id(user)]).first else {
            throw error(.notFound, "no such key with a copy for you in this channel")
        }
        return ok(.key(.init(key: try Self.keyRecord(row), rotationRequired: rotationRequired)))
    }

    func keys(_ request: Request.Keys) throws -> Outcome {
        let creator = try userID
        let channelID = request.channelID

        let (stored, atSeq): (KeyRecord, Int) = try db.transaction {
            guard let channel = try db.execute(ChannelSQL.lockChannel, [.id(channelID)]).first else {
                throw error(.notMember, "not a member of this channel")
            }
            _ = try requireMember(channelID)
            let version = try channel.int(0)
            let currentKey = try channel.optionalID(2)
            guard request.previousKeyID == currentKey else {
                throw ErrorFrame(re: re, code: .keyConflict, message: "previous_key_id is not the newest key",
                                 currentKeyID: currentKey)
            }

            let members = try db.execute(KeySQL.memberKeys, [.id(channelID)]).rows.map { row in
                (id: try row.id(0), publicKey: try row.bytes(1))
            }
            let memberIDs = members.map(\.id)
            let named = request.encryptedKeys.map(\.userID)
            guard request.membershipVersion == version, named.count == memberIDs.count,
                  Set(named) == Set(memberIDs) else {
                throw ErrorFrame.membersMismatch(re: re, members: memberIDs, membershipVersion: version)
            }
            let publicKeys = Dictionary(uniqueKeysWithValues: members.map { ($0.id, $0.publicKey) })
            for wrapped in request.encryptedKeys {
                let modulusBytes = publicKeys[wrapped.userID].flatMap { try? RSAPublicKey(spkiDER: $0).modulusBytes }
                guard wrapped.encryptedKey.count == modulusBytes else {
                    throw error(.badRequest, "encrypted_keys: the copy for \(wrapped.userID) is not as long as its RSA modulus")
                }
            }
            let verify = try storedKeyVerifier(for: creator)
            guard verify(creator, request.signedText, request.sig) else {
                throw error(.badRequest, "sig does not verify with your public key")
            }

            let inserted: Row?
            do {
                inserted = try db.execute(KeySQL.insertKey, [
                    .id(request.keyID), .id(channelID), .id(creator), .id(request.previousKeyID),
                    .int(request.membershipVersion), .bytes(request.digest), .bytes(request.sig),
                    .int(configuration.keyTTLSeconds), .int(try channel.int(3)),
                ]).first
            } catch let failure as StoreError where failure.isUniqueViolation {
                throw error(.badRequest, "key_id is already used")
            }
            guard let inserted else {
                // Another rotation from the same predecessor committed first.
                let winner = try db.execute(KeySQL.successorKey, [.id(channelID), .id(request.previousKeyID)]).first?.id(0)
                throw ErrorFrame(re: re, code: .keyConflict, message: "another rotation won", currentKeyID: winner)
            }
            try db.execute(KeySQL.insertKeyCopies, [
                .id(request.keyID), .array(request.encryptedKeys.map(\.userID.string)),
                .array(request.encryptedKeys.map { KeySQL.byteaLiteral($0.encryptedKey) }),
            ])
            try db.execute(KeySQL.setCurrentKey, [.id(channelID), .id(request.keyID)])
            let atSeq = try channel.int(3)
            try db.announce(.key(node: context.nodeID, channelID: channelID, keyID: request.keyID, atSeq: atSeq))
            return (KeyRecord(
                keyID: request.keyID, channelID: channelID, creatorID: creator, previousKeyID: request.previousKeyID,
                membershipVersion: request.membershipVersion, digest: request.digest, sig: request.sig,
                createdAt: try inserted.int(0), expiresAt: try inserted.int(1), encryptedKey: nil), atSeq)
        }

        let copies = Dictionary(request.encryptedKeys.map { ($0.userID, $0.encryptedKey) }, uniquingKeysWith: { first, _ in first })
        return ok(.keys(.init(keyID: stored.keyID, createdAt: stored.createdAt, expiresAt: stored.expiresAt)),
                  effects: [.key(stored, copies: copies, atSeq: atSeq)])
    }

    // MARK: - Helpers

    /// A key row (columns in `keyColumns` order) as the contract's record.
    static func keyRecord(_ row: Row) throws -> KeyRecord {
        KeyRecord(
            keyID: try row.id(0), channelID: try row.id(1), creatorID: try row.id(2),
            previousKeyID: try row.optionalID(3), membershipVersion: try row.int(4), digest: try row.bytes(5),
            sig: try row.bytes(6), createdAt: try row.int(7), expiresAt: try row.int(8),
            encryptedKey: try row.optionalBytes(9))
    }
}
