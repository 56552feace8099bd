import Foundation
import ParleyProtocol
import ParleyStore

/// What a node reads from the tables to fan out another node's commits: messages by seq
/// range, a key record with all its wrapped copies, a membership change as `event.member`.
/// Used by the LISTEN thread and, for gaps and catch-ups, by the database workers.
enum ClusterQueries {
    /// With each message the membership version in force at its commit: the newest change
    /// committed behind an earlier message (`at_seq < seq`). Null when the channel's
    /// changes predate `at_seq` (migration 0004).
    static let messageRanges = PreparedStatement("cluster_message_ranges", """
        SELECT m.channel_id, m.seq, m.sender_id, m.key_id, m.iv, m.ciphertext, m.ts,
               (extract(epoch FROM m.received_at) * 1000)::bigint, v.version
        FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS r (channel_id, first, last)
        JOIN messages m ON m.channel_id = r.channel_id AND m.seq BETWEEN r.first AND r.last
        LEFT JOIN LATERAL (SELECT s.version FROM membership_statements s
                           WHERE s.channel_id = m.channel_id AND s.at_seq < m.seq
                           ORDER BY s.at_seq DESC, s.version DESC LIMIT 1) v ON true
        ORDER BY m.channel_id, m.seq
        """)

    static let key = PreparedStatement("cluster_key", """
        SELECT k.id, k.channel_id, k.creator_id, k.previous_key_id, k.membership_version, k.digest, k.sig,
               \(ChannelSQL.millis("k.created_at")), \(ChannelSQL.millis("k.expires_at")), NULL::bytea, k.at_seq
        FROM channel_keys k WHERE k.id = $1
        """)

    static let keyCopies = PreparedStatement("cluster_key_copies",
                                             "SELECT user_id, encrypted_key FROM channel_key_copies WHERE key_id = $1")

    static let statements = PreparedStatement("cluster_statements", """
        SELECT \(ChannelSQL.statementColumns) FROM membership_statements
        WHERE channel_id = $1 AND version BETWEEN $2 AND $3 ORDER BY version
        """)

    static let changes = PreparedStatement("cluster_changes", """
        SELECT \(ChannelSQL.statementColumns), at_seq FROM membership_statements
        WHERE channel_id = $1 AND version BETWEEN $2 AND $3 ORDER BY version
        """)

    /// The state of the watched channels after a LISTEN (re)connect.
    static let channelStates = PreparedStatement("cluster_channel_states", """
        SELECT id, last_seq, current_key_id, membership_version FROM channels WHERE id = ANY ($1::uuid[])
        """)

    /// Membership changes of any channel that began since a moment (a change commits
    /// within its transaction's lifetime, so a margin before the outage covers them).
    static let changesSince = PreparedStatement("cluster_changes_since", """
        SELECT channel_id, version, at_seq FROM membership_statements
        WHERE created_at > to_timestamp($1::double precision) ORDER BY created_at, channel_id, version LIMIT 10000
        """)

    /// Messages of several channels by seq range, ascending per channel.
    static func messages(_ ranges: [Announcement.Range], on db: PostgresConnection) throws -> [MessageRecord] {
        try messagesWithVersions(ranges, on: db).map(\.record)
    }

    /// The same, each with the membership version in force at its commit (if known).
    static func messagesWithVersions(_ ranges: [Announcement.Range],
                                     on db: PostgresConnection) throws -> [(record: MessageRecord, membershipVersion: Int?)] {
        guard !ranges.isEmpty else { return [] }
        return try db.execute(messageRanges, [
            .array(ranges.map(\.channelID.string)), .integerArray(ranges.map(\.first)),
            .integerArray(ranges.map(\.last)),
        ]).rows.map { row in
            (MessageRecord(channelID: try row.id(0), seq: try row.int(1), senderID: try row.id(2), keyID: try row.id(3),
                           iv: try row.bytes(4), ciphertext: try row.bytes(5), ts: try row.int(6),
                           receivedAt: try row.int(7)),
             try row.isNull(8) ? nil : try row.int(8))
        }
    }

    /// A key record and every member's wrapped copy; nil when it does not exist.
    static func key(_ keyID: ID, on db: PostgresConnection) throws -> (KeyRecord, copies: [ID: [UInt8]])? {
        try keyWithPlace(keyID, on: db).map { ($0.record, $0.copies) }
    }

    /// The same with where the record sits among the channel's messages (nil for keys
    /// stored before migration 0004).
    static func keyWithPlace(_ keyID: ID,
                             on db: PostgresConnection) throws -> (record: KeyRecord, copies: [ID: [UInt8]], atSeq: Int?)? {
        guard let row = try db.execute(key, [.id(keyID)]).first else { return nil }
        let record = try Handler.keyRecord(row)
        var copies: [ID: [UInt8]] = [:]
        for copy in try db.execute(keyCopies, [.id(keyID)]).rows {
            copies[try copy.id(0)] = try copy.bytes(1)
        }
        return (record, copies, try row.isNull(10) ? nil : try row.int(10))
    }

    /// The `event.member`s of versions `after + 1 ... through` of a channel, each with where
    /// it sits among the messages (its `at_seq`; nil for changes stored before migration
    /// 0004). `by` is the statement's signer.
    static func changes(channelID: ID, after: Int, through: Int,
                        on db: PostgresConnection) throws -> [(Event.Member, members: [ID], atSeq: Int?)] {
        guard through > after else { return [] }
        var previous: MembershipStatement?
        var events: [(Event.Member, members: [ID], atSeq: Int?)] = []
        for row in try db.execute(changes, [.id(channelID), .int(max(1, after)), .int(through)]).rows {
            let statement = try Handler.statementRow(row)
            let atSeq = try row.isNull(7) ? nil : try row.int(7)
            defer { previous = statement }
            guard statement.version > after else { continue }
            for event in memberEvents(channelID: channelID, statement: statement, previous: previous,
                                      userID: nil, action: nil, by: nil) {
                events.append((event, statement.members, atSeq))
            }
        }
        return events
    }

    /// The `event.member`s of membership version `version`, as the committing node sent
    /// them: for a creation (version 1) one per member but its signer; otherwise one for
    /// the member that joined or left, `by` being who asked (`by`, when the announcement
    /// said) or the statement's signer.
    static func memberEvents(channelID: ID, version: Int, userID: ID?, action: Event.Member.Action?, by: ID?,
                             on db: PostgresConnection) throws -> [(Event.Member, members: [ID])] {
        let statements = try db.execute(statements, [.id(channelID), .int(max(1, version - 1)), .int(version)])
            .rows.map(Handler.statementRow)
        guard let statement = statements.last, statement.version == version else { return [] }
        return memberEvents(channelID: channelID, statement: statement,
                            previous: statements.first { $0.version == version - 1 },
                            userID: userID, action: action, by: by).map { ($0, statement.members) }
    }

    /// The events of one statement given the one before it (nil for version 1).
    private static func memberEvents(channelID: ID, statement: MembershipStatement, previous: MembershipStatement?,
                                     userID: ID?, action: Event.Member.Action?, by: ID?) -> [Event.Member] {
        if statement.version == 1 {
            let creator = by ?? statement.signerID
            return statement.members.filter { $0 != creator }.map {
                Event.Member(channelID: channelID, userID: $0, action: .added, by: creator, membership: statement)
            }
        }
        let before = Set(previous?.members ?? [])
        let after = Set(statement.members)
        let change: (ID, Event.Member.Action)?
        if let userID, let action {
            change = (userID, action)
        } else if let added = after.subtracting(before).first {
            change = (added, .added)
        } else if let removed = before.subtracting(after).first {
            change = (removed, .removed)
        } else {
            change = nil
        }
        guard let (user, kind) = change else { return [] }
        return [Event.Member(channelID: channelID, userID: user, action: kind, by: by ?? statement.signerID,
                             membership: statement)]
    }
}
