import Foundation
import ParleyStore
import ParleyTestSupport
import XCTest

/// The schema's guarantees, exercised through `Queries` (and plain SQL with bind
/// parameters where no query exists yet).
final class SchemaQueriesTests: XCTestCase {
    private static let database = Result { try TestDatabase.makeDatabase() }

    private func connect() throws -> PostgresConnection {
        try PostgresConnection(connectionString: Self.database.get())
    }

    /// A user, a channel owned by them and a first key.
    private func channelWithKey(on connection: PostgresConnection) throws -> (user: UserRow, channel: UUID, key: UUID) {
        let user = try Fixture.user(on: connection)
        let channel = try Fixture.channel(owner: user.id, on: connection)
        let key = try Fixture.key(channel: channel, creator: user.id, previous: nil, on: connection)
        return (user, channel, key)
    }

    /// Appends inside a transaction, as the relay does.
    @discardableResult
    private func append(_ message: MessageRow, on connection: PostgresConnection) throws -> MessageRow {
        try connection.transaction {
            guard let stored = try Queries.appendMessage(message, on: connection) else {
                throw StoreError(.queryFailed, detail: "channel \(message.channelID) does not exist")
            }
            return stored
        }
    }

    private func seqs(_ channel: UUID, on connection: PostgresConnection) throws -> [Int64] {
        try connection.execute("SELECT seq FROM messages WHERE channel_id = $1 ORDER BY seq", [.uuid(channel)])
            .rows.map { try $0.int64(0) }
    }

    // MARK: - Users and sessions

    func testInsertUserAndReadItBackByNameAndID() throws {
        let connection = try connect()
        let user = Fixture.userRow()
        let passkey = Fixture.bytes(32)
        let before = nowMilliseconds()
        let stored = try Queries.insertUser(user, passkeyHash: passkey, on: connection)
        assertPlausibleMilliseconds(stored.createdAt, near: before)
        XCTAssertEqual(stored.id, user.id)
        XCTAssertEqual(stored.username, user.username)
        XCTAssertEqual(stored.publicKey, user.publicKey)
        XCTAssertEqual(stored.keyFingerprint, user.keyFingerprint)

        XCTAssertEqual(try Queries.user(named: user.username, on: connection), stored)
        XCTAssertEqual(try Queries.user(id: user.id, on: connection), stored)
        let hash = try XCTUnwrap(Queries.passkeyHash(username: user.username, on: connection))
        XCTAssertEqual(hash.0, user.id)
        XCTAssertEqual(hash.1, passkey)

        XCTAssertNil(try Queries.user(named: Fixture.username(), on: connection))
        XCTAssertNil(try Queries.user(id: UUID(), on: connection))
        XCTAssertNil(try Queries.passkeyHash(username: Fixture.username(), on: connection))
        // Names are exact: no case folding, no pattern matching.
        XCTAssertNil(try Queries.user(named: user.username.uppercased(), on: connection))
        XCTAssertNil(try Queries.user(named: "u_%", on: connection))
    }

    func testTakenUsernameIsAUniqueViolation() throws {
        let connection = try connect()
        let first = try Fixture.user(on: connection)
        let second = Fixture.userRow(named: first.username)
        let error = try XCTUnwrap(storeError { try Queries.insertUser(second, passkeyHash: Fixture.bytes(32), on: connection) })
        XCTAssertTrue(error.isUniqueViolation)
        XCTAssertEqual(error.constraint, "users_username_key")
        XCTAssertNil(try Queries.user(id: second.id, on: connection))
        XCTAssertEqual(try Queries.user(named: first.username, on: connection)?.id, first.id)
    }

    func testSessionLifecycle() throws {
        let connection = try connect()
        let user = try Fixture.user(on: connection)
        let token = Fixture.bytes(32)
        let before = nowMilliseconds()
        let expires = try Queries.insertSession(tokenHash: token, userID: user.id, lifetimeSeconds: 30 * 86_400, on: connection)
        assertPlausibleMilliseconds(expires, near: before + 30 * 86_400_000)

        let found = try XCTUnwrap(Queries.session(tokenHash: token, on: connection))
        XCTAssertEqual(found.0, user)
        XCTAssertEqual(found.1, expires)
        XCTAssertNil(try Queries.session(tokenHash: Fixture.bytes(32), on: connection), "an unknown token finds nothing")

        XCTAssertTrue(try Queries.deleteSession(tokenHash: token, on: connection))
        XCTAssertNil(try Queries.session(tokenHash: token, on: connection))
        XCTAssertFalse(try Queries.deleteSession(tokenHash: token, on: connection), "already gone")
        XCTAssertEqual(try Queries.user(id: user.id, on: connection), user, "the user outlives the session")
    }

    func testExpiredSessionIsNotReturned() throws {
        let connection = try connect()
        let user = try Fixture.user(on: connection)
        let token = Fixture.bytes(32)
        try connection.execute(
            "INSERT INTO sessions (token_hash, user_id, expires_at) VALUES ($1, $2, now() - interval '1 second')",
            [.bytes(token), .uuid(user.id)]
        )
        XCTAssertEqual(try connection.execute("SELECT count(*) FROM sessions WHERE token_hash = $1", [.bytes(token)])
            .first?.int(0), 1, "the row is there")
        XCTAssertNil(try Queries.session(tokenHash: token, on: connection))
        XCTAssertTrue(try Queries.deleteSession(tokenHash: token, on: connection))
    }

    func testSessionTokenHashMustBe32Bytes() throws {
        let connection = try connect()
        let user = try Fixture.user(on: connection)
        let error = try XCTUnwrap(storeError {
            try Queries.insertSession(tokenHash: Fixture.bytes(16), userID: user.id, lifetimeSeconds: 60, on: connection)
        })
        XCTAssertTrue(error.isCheckViolation)
        XCTAssertEqual(error.constraint, "sessions_token_hash_check")
    }

    // MARK: - Messages

    func testAppendAssignsSeqsPerChannel() throws {
        let connection = try connect()
        let (user, first, firstKey) = try channelWithKey(on: connection)
        let second = try Fixture.channel(owner: user.id, on: connection)
        let secondKey = try Fixture.key(channel: second, creator: user.id, previous: nil, on: connection)

        var firstSeqs: [Int64] = [], secondSeqs: [Int64] = []
        for round in 0..<3 {
            firstSeqs.append(try append(Fixture.message(channel: first, sender: user.id, key: firstKey), on: connection).seq)
            if round < 2 {
                secondSeqs.append(try append(Fixture.message(channel: second, sender: user.id, key: secondKey), on: connection).seq)
            }
        }
        XCTAssertEqual(firstSeqs, [1, 2, 3])
        XCTAssertEqual(secondSeqs, [1, 2])
        XCTAssertEqual(try seqs(first, on: connection), [1, 2, 3])
        XCTAssertEqual(try seqs(second, on: connection), [1, 2])
        XCTAssertEqual(try Queries.lastSeq(channelID: first, on: connection), 3)
        XCTAssertEqual(try Queries.lastSeq(channelID: second, on: connection), 2)
        XCTAssertNil(try Queries.lastSeq(channelID: UUID(), on: connection))
    }

    func testAppendToMissingChannelReturnsNil() throws {
        let connection = try connect()
        let (user, _, key) = try channelWithKey(on: connection)
        let missing = UUID()
        let result = try connection.transaction {
            try Queries.appendMessage(Fixture.message(channel: missing, sender: user.id, key: key), on: connection)
        }
        XCTAssertNil(result)
        XCTAssertEqual(try connection.execute("SELECT count(*) FROM messages WHERE channel_id = $1", [.uuid(missing)])
            .first?.int(0), 0)
    }

    func testAppendedMessageReadsBackWithAllFields() throws {
        let connection = try connect()
        let (user, channel, key) = try channelWithKey(on: connection)
        let message = Fixture.message(channel: channel, sender: user.id, key: key)
        let before = nowMilliseconds()
        let stored = try append(message, on: connection)
        XCTAssertEqual(stored.seq, 1)
        assertPlausibleMilliseconds(stored.receivedAt, near: before)

        let read = try Queries.messages(channelID: channel, after: 0, limit: 10, on: connection)
        XCTAssertEqual(read, [stored])
        XCTAssertEqual(read.first?.iv, message.iv)
        XCTAssertEqual(read.first?.ciphertext, message.ciphertext)
        XCTAssertEqual(read.first?.ts, message.ts)
        XCTAssertEqual(read.first?.clientMessageID, message.clientMessageID)
        XCTAssertEqual(read.first?.keyID, key)
        XCTAssertEqual(read.first?.senderID, user.id)
    }

    func testMessagesPageAscending() throws {
        let connection = try connect()
        let (user, channel, key) = try channelWithKey(on: connection)
        var sent: [MessageRow] = []
        for _ in 0..<7 {
            sent.append(try append(Fixture.message(channel: channel, sender: user.id, key: key), on: connection))
        }
        XCTAssertEqual(sent.map(\.seq), [1, 2, 3, 4, 5, 6, 7])

        var pages: [[Int64]] = []
        var after: Int64 = 0
        var collected: [MessageRow] = []
        while true {
            let page = try Queries.messages(channelID: channel, after: after, limit: 3, on: connection)
            if page.isEmpty { break }
            pages.append(page.map(\.seq))
            collected += page
            after = try XCTUnwrap(page.last).seq
            XCTAssertLessThan(pages.count, 10, "paging does not end")
            if pages.count >= 10 { break }
        }
        XCTAssertEqual(pages, [[1, 2, 3], [4, 5, 6], [7]])
        XCTAssertEqual(collected, sent)
        XCTAssertEqual(try Queries.messages(channelID: channel, after: 5, limit: 100, on: connection).map(\.seq), [6, 7])
        XCTAssertEqual(try Queries.messages(channelID: channel, after: 7, limit: 100, on: connection), [])
        XCTAssertEqual(try Queries.messages(channelID: UUID(), after: 0, limit: 100, on: connection), [])
    }

    /// Eight writers on one channel, some rolling back after taking a seq: the stored seqs
    /// are exactly 1...N, and each committed message kept the seq it was given.
    func testSeqsAreGapFreeUnderConcurrentAppendsWithRollbacks() throws {
        let setup = try connect()
        let (owner, channel, key) = try channelWithKey(on: setup)
        let senders = try (0..<8).map { _ in try Fixture.user(on: setup).id }
        let connectionString = try Self.database.get()

        let outcomes = onThreads(8) { thread -> [UUID: Int64] in
            let connection = try PostgresConnection(connectionString: connectionString)
            var committed: [UUID: Int64] = [:]
            for index in 0..<50 {
                let rollBack = index % 10 == 3
                let message = Fixture.message(channel: channel, sender: senders[thread], key: key)
                do {
                    let seq = try connection.transaction { () throws -> Int64 in
                        guard let stored = try Queries.appendMessage(message, on: connection) else {
                            throw StoreError(.queryFailed, detail: "channel vanished")
                        }
                        if rollBack { throw DeliberateRollback() }
                        return stored.seq
                    }
                    committed[message.clientMessageID] = seq
                } catch is DeliberateRollback {
                    continue
                }
            }
            return committed
        }
        var committed: [UUID: Int64] = [:]
        for (thread, outcome) in outcomes.enumerated() {
            let mine = try outcome.get()
            XCTAssertEqual(mine.count, 45, "thread \(thread)")
            committed.merge(mine) { first, _ in first }
        }
        let total = Int64(committed.count)
        XCTAssertEqual(total, 8 * 45)

        let stored = try setup.execute(
            "SELECT seq, client_msg_id FROM messages WHERE channel_id = $1 ORDER BY seq", [.uuid(channel)]
        ).rows.map { (try $0.int64(0), try $0.uuid(1)) }
        XCTAssertEqual(stored.map(\.0), Array(1...total), "seqs have gaps or duplicates")
        XCTAssertEqual(Set(committed.values).count, committed.count, "two commits were given one seq")
        for (seq, clientID) in stored {
            XCTAssertEqual(committed[clientID], seq, "message \(clientID) is stored at another seq than it was given")
        }
        XCTAssertEqual(try Queries.lastSeq(channelID: channel, on: setup), total)
        _ = owner
    }

    func testRepeatedClientMessageIDIsRefusedWithoutUsingASeq() throws {
        let connection = try connect()
        let (user, channel, key) = try channelWithKey(on: connection)
        let first = try append(Fixture.message(channel: channel, sender: user.id, key: key), on: connection)
        let retry = Fixture.message(channel: channel, sender: user.id, key: key, clientMessageID: first.clientMessageID)
        let error = try XCTUnwrap(storeError { try append(retry, on: connection) })
        XCTAssertTrue(error.isUniqueViolation)
        XCTAssertEqual(error.constraint, "messages_idempotent")
        XCTAssertEqual(try Queries.lastSeq(channelID: channel, on: connection), 1, "the refused append took no seq")

        // Another sender may use the same client id.
        let other = try Fixture.user(on: connection)
        let theirs = Fixture.message(channel: channel, sender: other.id, key: key, clientMessageID: first.clientMessageID)
        XCTAssertEqual(try append(theirs, on: connection).seq, 2)
        XCTAssertEqual(try seqs(channel, on: connection), [1, 2])
    }

    func testRepeatedIVUnderOneKeyIsRefused() throws {
        let connection = try connect()
        let (user, channel, key) = try channelWithKey(on: connection)
        let iv = Fixture.iv()
        try append(Fixture.message(channel: channel, sender: user.id, key: key, iv: iv), on: connection)
        let error = try XCTUnwrap(storeError {
            try append(Fixture.message(channel: channel, sender: user.id, key: key, iv: iv), on: connection)
        })
        XCTAssertTrue(error.isUniqueViolation)
        XCTAssertEqual(error.constraint, "messages_iv_once")

        // The same iv under the next key is fine.
        let next = try Fixture.key(channel: channel, creator: user.id, previous: key, on: connection)
        XCTAssertEqual(try append(Fixture.message(channel: channel, sender: user.id, key: next, iv: iv), on: connection).seq, 2)
    }

    func testIVMustBe12Bytes() throws {
        let connection = try connect()
        let (user, channel, key) = try channelWithKey(on: connection)
        for length in [11, 13, 0] {
            let message = Fixture.message(channel: channel, sender: user.id, key: key, iv: Fixture.bytes(length))
            let error = try XCTUnwrap(storeError { try append(message, on: connection) })
            XCTAssertTrue(error.isCheckViolation, "\(length): \(error.debugDescription)")
            XCTAssertEqual(error.constraint, "messages_iv_check")
        }
        var short = Fixture.message(channel: channel, sender: user.id, key: key)
        short.ciphertext = Fixture.bytes(15)
        XCTAssertEqual(storeError { try append(short, on: connection) }?.constraint, "messages_ciphertext_check")
        XCTAssertEqual(try Queries.lastSeq(channelID: channel, on: connection), 0)
        XCTAssertEqual(try seqs(channel, on: connection), [])
    }

    func testMessageWithUnknownKeyIsAForeignKeyViolation() throws {
        let connection = try connect()
        let (user, channel, _) = try channelWithKey(on: connection)
        let error = try XCTUnwrap(storeError {
            try append(Fixture.message(channel: channel, sender: user.id, key: UUID()), on: connection)
        })
        XCTAssertTrue(error.isForeignKeyViolation)
        XCTAssertEqual(error.constraint, "messages_key_id_fkey")
    }

    // MARK: - Channel keys and membership

    func testChannelKeysFormOneChain() throws {
        let connection = try connect()
        let (user, channel, first) = try channelWithKey(on: connection)

        // A second key without a predecessor: "no predecessor" counts once per channel.
        let rootAgain = try XCTUnwrap(storeError { try Fixture.key(channel: channel, creator: user.id, previous: nil, on: connection) })
        XCTAssertTrue(rootAgain.isUniqueViolation)
        XCTAssertEqual(rootAgain.constraint, "channel_keys_one_successor")

        // One successor per key.
        let second = try Fixture.key(channel: channel, creator: user.id, previous: first, on: connection)
        let fork = try XCTUnwrap(storeError { try Fixture.key(channel: channel, creator: user.id, previous: first, on: connection) })
        XCTAssertTrue(fork.isUniqueViolation)
        XCTAssertEqual(fork.constraint, "channel_keys_one_successor")
        let third = try Fixture.key(channel: channel, creator: user.id, previous: second, on: connection)

        let chain = try connection.execute(
            "SELECT id, previous_key_id FROM channel_keys WHERE channel_id = $1 ORDER BY created_at, id", [.uuid(channel)]
        ).rows.map { (try $0.uuid(0), try $0.optionalUUID(1)) }
        XCTAssertEqual(chain.count, 3)
        let links = Dictionary(uniqueKeysWithValues: chain.map { ($0.0, $0.1) })
        XCTAssertEqual(links[first], .some(nil))
        XCTAssertEqual(links[second], .some(first))
        XCTAssertEqual(links[third], .some(second))

        // Another channel has its own first key.
        let other = try Fixture.channel(owner: user.id, on: connection)
        XCTAssertNoThrow(try Fixture.key(channel: other, creator: user.id, previous: nil, on: connection))

        // The channel can point at its current key.
        try connection.execute("UPDATE channels SET current_key_id = $2 WHERE id = $1", [.uuid(channel), .uuid(third)])
        XCTAssertEqual(try connection.execute("SELECT current_key_id FROM channels WHERE id = $1", [.uuid(channel)])
            .first?.uuid(0), third)
        let dangling = try XCTUnwrap(storeError {
            try connection.execute("UPDATE channels SET current_key_id = $2 WHERE id = $1", [.uuid(channel), .uuid(UUID())])
        })
        XCTAssertTrue(dangling.isForeignKeyViolation)
        XCTAssertEqual(dangling.constraint, "channels_current_key_fk")
    }

    func testMembershipStatementStoresMembersAndKeyCopies() throws {
        let connection = try connect()
        let (owner, channel, key) = try channelWithKey(on: connection)
        let member = try Fixture.user(on: connection)
        let members = [owner.id, member.id].sorted { $0.uuidString.lowercased() < $1.uuidString.lowercased() }
        let signature = Fixture.bytes(256), textHash = Fixture.bytes(32)
        try connection.execute("""
            INSERT INTO membership_statements (channel_id, version, prev, ts, owner_id, members, signer_id, sig, text_hash)
            VALUES ($1, 1, $2, $3, $4, $5, $4, $6, $7)
            """, [.uuid(channel), .bytes([]), .integer(1_700_000_000), .uuid(owner.id), .uuidArray(members),
                  .bytes(signature), .bytes(textHash)])
        let row = try XCTUnwrap(connection.execute(
            "SELECT members, array_length(members, 1), prev, sig, text_hash FROM membership_statements WHERE channel_id = $1",
            [.uuid(channel)]
        ).first)
        XCTAssertEqual(try row.uuidArray(0), members)
        XCTAssertEqual(try row.int(1), 2)
        XCTAssertEqual(try row.bytes(2), [])
        XCTAssertEqual(try row.bytes(3), signature)
        XCTAssertEqual(try row.bytes(4), textHash)

        // Version 1 twice is a primary-key violation; a 31-byte prev a check violation.
        let again = try XCTUnwrap(storeError {
            try connection.execute("""
                INSERT INTO membership_statements (channel_id, version, prev, ts, owner_id, members, signer_id, sig, text_hash)
                VALUES ($1, 1, $2, 0, $3, $4, $3, $5, $6)
                """, [.uuid(channel), .bytes([]), .uuid(owner.id), .uuidArray(members), .bytes(signature), .bytes(textHash)])
        })
        XCTAssertEqual(again.constraint, "membership_statements_pkey")
        let badPrev = try XCTUnwrap(storeError {
            try connection.execute("""
                INSERT INTO membership_statements (channel_id, version, prev, ts, owner_id, members, signer_id, sig, text_hash)
                VALUES ($1, 2, $2, 0, $3, $4, $3, $5, $6)
                """, [.uuid(channel), .bytes(Fixture.bytes(31)), .uuid(owner.id), .uuidArray(members),
                      .bytes(signature), .bytes(textHash)])
        })
        XCTAssertTrue(badPrev.isCheckViolation)

        for (id, role) in [(owner.id, "owner"), (member.id, "member")] {
            try connection.execute(
                "INSERT INTO channel_members (channel_id, user_id, role, join_seq) VALUES ($1, $2, $3, 0)",
                [.uuid(channel), .uuid(id), .text(role)]
            )
            try connection.execute(
                "INSERT INTO channel_key_copies (key_id, user_id, encrypted_key) VALUES ($1, $2, $3)",
                [.uuid(key), .uuid(id), .bytes(Fixture.bytes(256))]
            )
        }
        let badRole = try XCTUnwrap(storeError {
            try connection.execute(
                "INSERT INTO channel_members (channel_id, user_id, role, join_seq) VALUES ($1, $2, 'admin', 0)",
                [.uuid(channel), .uuid(try Fixture.user(on: connection).id)]
            )
        })
        XCTAssertTrue(badRole.isCheckViolation)
        XCTAssertEqual(try connection.execute("SELECT count(*) FROM channel_members WHERE channel_id = $1", [.uuid(channel)])
            .first?.int(0), 2)
        XCTAssertEqual(try connection.execute("SELECT count(*) FROM channel_key_copies WHERE key_id = $1", [.uuid(key)])
            .first?.int(0), 2)
    }

    func testDeletingAChannelCascades() throws {
        let connection = try connect()
        let (user, channel, key) = try channelWithKey(on: connection)
        try append(Fixture.message(channel: channel, sender: user.id, key: key), on: connection)
        try connection.execute(
            "INSERT INTO channel_key_copies (key_id, user_id, encrypted_key) VALUES ($1, $2, $3)",
            [.uuid(key), .uuid(user.id), .bytes(Fixture.bytes(256))]
        )
        XCTAssertEqual(try connection.execute("DELETE FROM channels WHERE id = $1", [.uuid(channel)]).affectedRows, 1)
        for table in ["messages", "channel_keys"] {
            XCTAssertEqual(try connection.execute("SELECT count(*) FROM \(table) WHERE channel_id = $1", [.uuid(channel)])
                .first?.int(0), 0, table)
        }
        XCTAssertEqual(try connection.execute("SELECT count(*) FROM channel_key_copies WHERE key_id = $1", [.uuid(key)])
            .first?.int(0), 0)
        XCTAssertEqual(try Queries.user(id: user.id, on: connection)?.id, user.id)
    }
}
