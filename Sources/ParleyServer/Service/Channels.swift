import Foundation
import ParleyCrypto
import ParleyProtocol
import ParleyStore

// Channels and signed membership (§5, §10 "Channels"). Runs on database worker threads.
//
// The statement rules themselves are `MembershipRules` (pure); these handlers read what
// the rules need under the channel's row lock, apply an accepted change in the same
// transaction, and describe the fan-out as effects.
//
// Choices where the contract leaves one:
// - `channel.create`: the statement rules come first, then unknown members (`not_found`),
//   then the id (`bad_request` when used; the insert's primary-key violation is caught,
//   and the rolled-back transaction leaves the id unused).
// - A stale `membership.version` (a concurrent change won) is `bad_request`: the statement
//   no longer follows the chain (§10); the client re-reads the chain and signs again.
// - A closed channel (its last member left) has no members, so every later request on it,
//   `channel.add` included, is `not_member`; its id stays used for `channel.create`.
// - Server times are stored truncated to whole milliseconds (`joined_at`), so the order
//   the relay uses for owner succession is exactly the one clients see on the wire.

/// The SQL of the channel handlers: prepared statements, values always bound.
enum ChannelSQL {
    /// Unix milliseconds of a timestamptz column, the wire's unit.
    static func millis(_ column: String) -> String { "(extract(epoch FROM \(column)) * 1000)::bigint" }

    /// Locks the channel row: concurrent changes of one channel (membership, keys,
    /// messages) serialize on it until commit.
    static let lockChannel = PreparedStatement("chm_lock_channel", """
        SELECT membership_version, owner_id, current_key_id, last_seq FROM channels WHERE id = $1 FOR UPDATE
        """)

    static let statementColumns = "version, prev, ts, owner_id, members, signer_id, sig"

    static let statementAt = PreparedStatement("chm_statement_at", """
        SELECT \(statementColumns), text_hash FROM membership_statements WHERE channel_id = $1 AND version = $2
        """)

    static let statementsAfter = PreparedStatement("chm_statements_after", """
        SELECT \(statementColumns) FROM membership_statements
        WHERE channel_id = $1 AND version > $2::bigint ORDER BY version
        """)

    static let publicKeyOf = PreparedStatement("chm_public_key", "SELECT public_key FROM users WHERE id = $1")

    static let countUsers = PreparedStatement("chm_count_users", "SELECT count(*) FROM users WHERE id = ANY($1::uuid[])")

    static let insertChannel = PreparedStatement("chm_insert_channel", """
        INSERT INTO channels (id, name, owner_id, membership_version, last_seq) VALUES ($1, $2, $3, 1, 0)
        """)

    static let insertStatement = PreparedStatement("chm_insert_statement", """
        INSERT INTO membership_statements (channel_id, version, prev, ts, owner_id, members, signer_id, sig, text_hash,
                                           at_seq)
        VALUES ($1, $2, $3, $4, $5, $6::uuid[], $7, $8, $9, $10)
        """)

    static let insertFirstMembers = PreparedStatement("chm_insert_first_members", """
        INSERT INTO channel_members (channel_id, user_id, role, joined_at, join_seq)
        SELECT $1, m, CASE WHEN m = $2::uuid THEN 'owner' ELSE 'member' END, date_trunc('milliseconds', now()), 0
        FROM unnest($3::uuid[]) AS m
        """)

    static let membersOf = PreparedStatement("chm_members_of", """
        SELECT m.user_id, u.username, u.public_key, m.role, \(millis("m.joined_at")), c.membership_version
        FROM channel_members m JOIN users u ON u.id = m.user_id JOIN channels c ON c.id = m.channel_id
        WHERE m.channel_id = $1 ORDER BY m.user_id
        """)

    static let channelsOf = PreparedStatement("chm_channels_of", """
        SELECT c.id, c.name, m.role, c.last_seq, c.current_key_id, c.membership_version
        FROM channel_members m JOIN channels c ON c.id = m.channel_id
        WHERE m.user_id = $1 ORDER BY c.created_at, c.id
        """)

    /// The owner's successor: earliest latest join (as clients see it, in ms), then the
    /// smaller id (uuid order is the order of the canonical strings).
    static let successor = PreparedStatement("chm_successor", """
        SELECT user_id FROM channel_members WHERE channel_id = $1 AND user_id <> $2
        ORDER BY \(millis("joined_at")), user_id LIMIT 1
        """)

    static let updateChannelMembership = PreparedStatement("chm_update_membership", """
        UPDATE channels SET membership_version = $2, owner_id = $3,
               closed_at = CASE WHEN $4::boolean THEN now() ELSE closed_at END
        WHERE id = $1
        """)

    /// Every membership change expires the current key at once (§5).
    static let expireCurrentKey = PreparedStatement("chm_expire_current_key", """
        UPDATE channel_keys SET expires_at = least(expires_at, date_trunc('milliseconds', now()))
        WHERE id = (SELECT current_key_id FROM channels WHERE id = $1)
        """)

    /// The new member's history starts after the channel's current last_seq.
    static let addMember = PreparedStatement("chm_add_member", """
        INSERT INTO channel_members (channel_id, user_id, role, joined_at, join_seq)
        SELECT id, $2, 'member', date_trunc('milliseconds', now()), last_seq FROM channels WHERE id = $1
        """)

    static let removeMember = PreparedStatement("chm_remove_member", """
        DELETE FROM channel_members WHERE channel_id = $1 AND user_id = $2
        """)

    static let promoteMember = PreparedStatement("chm_promote_member", """
        UPDATE channel_members SET role = 'owner' WHERE channel_id = $1 AND user_id = $2
        """)
}

extension Handler {
    // MARK: - Handlers

    func channelCreate(_ request: Request.ChannelCreate) throws -> Outcome {
        let creator = try userID
        let statement = request.membership
        let context = MembershipRules.Context(
            channelID: request.channelID, requester: creator, change: .create, now: nowSeconds,
            windowSeconds: configuration.timestampWindowSeconds)
        let accepted = try accept(statement, context)

        let members: [Member] = try db.transaction {
            let known = try db.execute(ChannelSQL.countUsers, [.array(statement.members.map(\.string))]).first?.int(0) ?? 0
            guard known == statement.members.count else { throw error(.notFound, "a member is not a known user") }
            do {
                try db.execute(ChannelSQL.insertChannel, [.id(request.channelID), .text(request.name), .id(accepted.owner)])
            } catch let failure as StoreError where failure.isUniqueViolation {
                // Rolled back with the transaction: a refused create leaves the id unused.
                throw error(.badRequest, "channel_id is already used")
            }
            try insert(statement, channelID: request.channelID, atSeq: 0)
            try db.execute(ChannelSQL.insertFirstMembers, [
                .id(request.channelID), .id(accepted.owner), .array(statement.members.map(\.string)),
            ])
            if statement.members.contains(where: { $0 != creator }) {
                try db.announce(.member(node: self.context.nodeID, channelID: request.channelID, version: 1, atSeq: 0,
                                        userID: nil, action: .added, by: creator))
            }
            return try currentMembers(request.channelID).members
        }
        // Each other member learns it was added, without subscribing to anything.
        let effects = statement.members.filter { $0 != creator }.map { member in
            Effect.member(
                Event.Member(channelID: request.channelID, userID: member, action: .added, by: creator,
                             membership: statement),
                members: statement.members, atSeq: 0)
        }
        return ok(.channelCreate(.init(channelID: request.channelID, name: request.name, members: members)),
                  effects: effects)
    }

    func channels() throws -> Outcome {
        let user = try userID
        let summaries = try db.execute(ChannelSQL.channelsOf, [.id(user)]).rows.map { row in
            ChannelSummary(
                channelID: try row.id(0), name: try row.string(1), role: try role(row, 2),
                lastSeq: try row.int(3), keyID: try row.optionalID(4), membershipVersion: try row.int(5))
        }
        return ok(.channels(.init(channels: summaries)))
    }

    func channelMembers(_ request: Request.ChannelMembers) throws -> Outcome {
        _ = try requireMember(request.channelID)
        let (members, version) = try currentMembers(request.channelID)
        return ok(.channelMembers(.init(members: members, membershipVersion: version)))
    }

    func channelMembership(_ request: Request.ChannelMembership) throws -> Outcome {
        _ = try requireMember(request.channelID)
        let statements = try db.execute(ChannelSQL.statementsAfter, [.id(request.channelID), .int(request.afterVersion ?? 0)])
            .rows.map { try Self.statementRow($0) }
        return ok(.channelMembership(.init(statements: statements)))
    }

    func channelChange(_ request: Request.MembershipChange, adding: Bool) throws -> Outcome {
        let requester = try userID
        let channelID = request.channelID
        let statement = request.membership

        let (accepted, atSeq): (MembershipRules.Accepted, Int) = try db.transaction {
            // The row lock first: the version, the chain head and the members read below
            // cannot change until this transaction ends.
            guard let channel = try db.execute(ChannelSQL.lockChannel, [.id(channelID)]).first else {
                throw error(.notMember, "not a member of this channel")
            }
            _ = try requireMember(channelID)
            let version = try channel.int(0)
            let owner = try channel.optionalID(1)
            guard let head = try db.execute(ChannelSQL.statementAt, [.id(channelID), .int(version)]).first else {
                throw StoreError(.decodingFailed, detail: "channel has no statement for its membership version")
            }
            var context = MembershipRules.Context(
                channelID: channelID, requester: requester,
                change: adding ? .add(request.userID) : .remove(request.userID),
                previous: try Self.statementRow(head), previousTextHash: try head.bytes(7),
                now: nowSeconds, windowSeconds: configuration.timestampWindowSeconds)
            if !adding, let owner, request.userID == owner {
                context.successor = try db.execute(ChannelSQL.successor, [.id(channelID), .id(owner)]).first?.id(0)
            }
            let accepted = try accept(statement, context)

            if adding {
                guard try db.execute(ChannelSQL.publicKeyOf, [.id(request.userID)]).first != nil else {
                    throw error(.notFound, "no such user")
                }
            }
            try insert(statement, channelID: channelID, atSeq: try channel.int(3))
            try db.execute(ChannelSQL.updateChannelMembership, [
                .id(channelID), .int(statement.version), .id(accepted.owner), .boolean(accepted.closesChannel),
            ])
            if adding {
                try db.execute(ChannelSQL.addMember, [.id(channelID), .id(request.userID)])
            } else {
                try db.execute(ChannelSQL.removeMember, [.id(channelID), .id(request.userID)])
                if accepted.ownerChanged, let newOwner = accepted.owner {
                    try db.execute(ChannelSQL.promoteMember, [.id(channelID), .id(newOwner)])
                }
            }
            try db.execute(ChannelSQL.expireCurrentKey, [.id(channelID)])
            try db.announce(.member(node: self.context.nodeID, channelID: channelID, version: statement.version,
                                    atSeq: try channel.int(3), userID: request.userID,
                                    action: accepted.action ?? (adding ? .added : .removed), by: requester))
            return (accepted, try channel.int(3))
        }

        let event = Event.Member(
            channelID: channelID, userID: request.userID, action: accepted.action ?? (adding ? .added : .removed),
            by: requester, membership: statement)
        let result = Response.MembershipChanged(
            channelID: channelID, userID: request.userID, membershipVersion: statement.version)
        return ok(adding ? .channelAdd(result) : .channelRemove(result),
                  effects: [.member(event, members: statement.members, atSeq: atSeq)])
    }

    // MARK: - Helpers

    /// Runs the pure rules with the signer's stored key; a rejection becomes its error frame.
    private func accept(_ statement: MembershipStatement, _ context: MembershipRules.Context) throws -> MembershipRules.Accepted {
        let verify = try storedKeyVerifier(for: statement.signerID)
        switch MembershipRules.check(statement, context, verify: verify) {
        case .success(let accepted): return accepted
        case .failure(let rejection): throw error(rejection.code, rejection.message)
        }
    }

    /// Verifies RSA-PSS signatures by `signer` with its stored public key (read once);
    /// any other signer, or an unknown one, never verifies.
    func storedKeyVerifier(for signer: ID) throws -> MembershipRules.Verifier {
        let der = try db.execute(ChannelSQL.publicKeyOf, [.id(signer)]).first?.bytes(0)
        let key = der.flatMap { try? RSAPublicKey(spkiDER: $0) }
        return { claimed, text, sig in
            guard claimed == signer, let key else { return false }
            return key.isValidSignature(sig, for: text)
        }
    }

    /// Stores a statement with exactly the §5 fields, and the hash its successor's `prev` names.
    /// `atSeq`: the channel's last_seq now (under its row lock).
    private func insert(_ statement: MembershipStatement, channelID: ID, atSeq: Int) throws {
        let textHash = SHA256.hash(statement.signedText(channelID: channelID))
        try db.execute(ChannelSQL.insertStatement, [
            .id(channelID), .int(statement.version), .bytes(statement.prev), .int(statement.ts),
            .id(statement.ownerID), .array(statement.members.sorted().map(\.string)), .id(statement.signerID),
            .bytes(statement.sig), .bytes(textHash), .int(atSeq),
        ])
    }

    /// The members (sorted by id) and the membership version, read in one statement.
    private func currentMembers(_ channelID: ID) throws -> (members: [Member], version: Int) {
        var version = 0
        let members = try db.execute(ChannelSQL.membersOf, [.id(channelID)]).rows.map { row in
            version = try row.int(5)
            return Member(
                userID: try row.id(0), username: try row.string(1), publicKey: try row.bytes(2),
                role: try role(row, 3), joinedAt: try row.int(4))
        }
        return (members, version)
    }

    /// A stored statement (columns in `statementColumns` order).
    static func statementRow(_ row: Row) throws -> MembershipStatement {
        MembershipStatement(
            version: try row.int(0), prev: try row.bytes(1), ts: try row.int(2), ownerID: try row.optionalID(3),
            members: try row.uuidArray(4).map { ID($0) }, signerID: try row.id(5), sig: try row.bytes(6))
    }

    private func role(_ row: Row, _ column: Int) throws -> Role {
        guard let role = Role(rawValue: try row.string(column)) else {
            throw StoreError(.decodingFailed, detail: "column \(column) is not a role")
        }
        return role
    }
}
