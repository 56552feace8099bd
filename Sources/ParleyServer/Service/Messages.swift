import ParleyProtocol
import ParleyStore

// `message` (send) and `messages` (history). Runs on a database worker thread, on the
// handler's connection; every value is a bind parameter.
//
// Order of the checks of `message` (§7, §10), each answered before the next is looked at:
//   1. not_member     — the requester is a current member (existence does not leak);
//   2. duplicate      — (sender, client_msg_id) already stored: the first result with
//                       `duplicate: true` on this channel, `bad_request` on another one,
//                       whatever the retry carries (so a retry never meets checks 3–6);
//   3. too_large      — the size needs nothing but the frame, so it is refused before any
//                       lock is taken;
//   4. key_expired    — `key_id` is the channel's newest key and `now < expires_at`;
//   5. bad_timestamp  — `ts` within ±window of the server clock at receipt, inclusive;
//   6. bad_request    — a repeated (`key_id`, `iv`), found by the `messages_iv_once`
//                       constraint when the row is inserted (it can only be known then).
// This is the order the contract lists them in §7 (key, ts, iv, size) except for the size,
// which is checked first of the four because it costs nothing and would otherwise make a
// refused 64 KiB+ request take the channel lock. Checks 4–6 run inside the inserting
// transaction under the channel's row lock, so a rotation or a membership change that
// commits first is seen, and a concurrent identical retry that committed while this one
// waited for the lock is answered as a duplicate.
extension Handler {
    static let firstSendQuery = PreparedStatement("message_first_send", """
        SELECT channel_id, seq, (extract(epoch FROM received_at) * 1000)::bigint
        FROM messages WHERE sender_id = $1 AND client_msg_id = $2
        """)

    /// Takes the channel's row lock; seq assignment and the insert happen under it.
    static let lockChannelQuery = PreparedStatement("message_lock_channel", """
        SELECT last_seq FROM channels WHERE id = $1 FOR UPDATE
        """)

    /// Read after the lock, as its own statement: under READ COMMITTED it then sees every
    /// transaction that held the lock before this one (its key, its membership change, its
    /// message), which a join inside the locking statement would not for other tables.
    static let sendStateQuery = PreparedStatement("message_send_state", """
        SELECT c.current_key_id,
               COALESCE(k.expires_at > clock_timestamp(), false),
               EXISTS (SELECT 1 FROM channel_members m WHERE m.channel_id = c.id AND m.user_id = $2),
               d.channel_id, d.seq, (extract(epoch FROM d.received_at) * 1000)::bigint
        FROM channels c
        LEFT JOIN channel_keys k ON k.id = c.current_key_id
        LEFT JOIN messages d ON d.sender_id = $2 AND d.client_msg_id = $3
        WHERE c.id = $1
        """)

    /// Assigns seq = last_seq + 1 and inserts, in one round trip (the lock is already held).
    static let appendQuery = PreparedStatement("message_append", """
        WITH next AS (UPDATE channels SET last_seq = last_seq + 1 WHERE id = $1::uuid RETURNING last_seq)
        INSERT INTO messages (channel_id, seq, sender_id, client_msg_id, key_id, iv, ciphertext, ts)
        SELECT $1::uuid, next.last_seq, $2::uuid, $3::uuid, $4::uuid, $5::bytea, $6::bytea, $7::bigint FROM next
        RETURNING seq, (extract(epoch FROM received_at) * 1000)::bigint
        """)

    /// What a send came to inside its transaction.
    private enum SendResult {
        case stored(seq: Int, receivedAt: Int)
        /// An identical retry committed while this one waited for the channel lock.
        case duplicate(FirstSend)
    }

    /// The stored result of the first send of a (sender, client_msg_id).
    private struct FirstSend {
        var channelID: ID
        var seq: Int
        var receivedAt: Int
    }

    func message(_ request: Request.Message) throws -> Outcome {
        // The ts window is measured on receipt, not after waiting for a lock.
        let receivedAtSeconds = nowSeconds
        // The decoder guarantees these (frame shape); a request built in code is held to them too.
        guard request.iv.count == Limits.ivBytes else { throw error(.badRequest, "iv: must be \(Limits.ivBytes) bytes") }
        guard request.ciphertext.count >= Limits.minCiphertextBytes else {
            throw error(.badRequest, "ciphertext: must be at least \(Limits.minCiphertextBytes) bytes")
        }
        let sender = try userID
        _ = try requireMember(request.channelID)

        if let first = try firstSend(sender: sender, clientMsgID: request.clientMsgID) {
            return try duplicateReply(first, request)
        }
        guard request.ciphertext.count <= configuration.maxCiphertextBytes else {
            throw error(.tooLarge, "ciphertext is longer than \(configuration.maxCiphertextBytes) bytes")
        }

        let result: SendResult
        do {
            result = try db.transaction {
                try append(request, sender: sender, receivedAtSeconds: receivedAtSeconds)
            }
        } catch let failure as StoreError where failure.isUniqueViolation {
            // Rolled back. A concurrent send of the same client_msg_id (on another channel,
            // or one that got past the check above) committed first: answer as its retry.
            if let first = try firstSend(sender: sender, clientMsgID: request.clientMsgID) {
                return try duplicateReply(first, request)
            }
            if failure.constraint == "messages_iv_once" {
                throw error(.badRequest, "iv: already used with this key_id")
            }
            throw failure
        }

        switch result {
        case .duplicate(let first):
            return try duplicateReply(first, request)
        case .stored(let seq, let receivedAt):
            // The transaction has committed: the row is durable before anyone hears of it.
            let record = MessageRecord(
                channelID: request.channelID, seq: seq, senderID: sender, keyID: request.keyID,
                iv: request.iv, ciphertext: request.ciphertext, ts: request.ts, receivedAt: receivedAt)
            return ok(.message(Response.Message(channelID: request.channelID, seq: seq, receivedAt: receivedAt,
                                                duplicate: false)),
                      effects: [.message(record)])
        }
    }

    /// Checks 4–6 and the insert; runs inside the transaction, under the channel's lock.
    private func append(_ request: Request.Message, sender: ID, receivedAtSeconds: Int) throws -> SendResult {
        guard try db.execute(Self.lockChannelQuery, [.id(request.channelID)]).first != nil else {
            throw error(.notMember, "not a member of this channel")
        }
        guard let state = try db.execute(Self.sendStateQuery,
                                         [.id(request.channelID), .id(sender), .id(request.clientMsgID)]).first else {
            throw error(.notMember, "not a member of this channel")
        }
        // Removed while this request waited for the lock.
        guard try state.bool(2) else { throw error(.notMember, "not a member of this channel") }
        if let firstChannel = try state.optionalID(3) {
            return .duplicate(FirstSend(channelID: firstChannel, seq: try state.int(4), receivedAt: try state.int(5)))
        }

        let currentKeyID = try state.optionalID(0)
        let keyUnexpired = try state.bool(1)
        guard currentKeyID == request.keyID, keyUnexpired else {
            var frame = error(.keyExpired, currentKeyID == nil
                              ? "the channel has no key yet: rotate"
                              : "key_id is not the channel's current unexpired key")
            frame.currentKeyID = currentKeyID
            throw frame
        }
        let window = configuration.timestampWindowSeconds
        guard abs(request.ts - receivedAtSeconds) <= window else {
            throw error(.badTimestamp, "ts is more than \(window) s from the server clock")
        }

        guard let row = try db.execute(Self.appendQuery, [
            .id(request.channelID), .id(sender), .id(request.clientMsgID), .id(request.keyID),
            .bytes(request.iv), .bytes(request.ciphertext), .int(request.ts),
        ]).first else {
            throw StoreError(.queryFailed, detail: "the channel row vanished under its lock")
        }
        return .stored(seq: try row.int(0), receivedAt: try row.int(1))
    }

    private func firstSend(sender: ID, clientMsgID: ID) throws -> FirstSend? {
        guard let row = try db.execute(Self.firstSendQuery, [.id(sender), .id(clientMsgID)]).first else { return nil }
        return FirstSend(channelID: try row.id(0), seq: try row.int(1), receivedAt: try row.int(2))
    }

    /// The first result again, or `bad_request` when the id was used on another channel.
    private func duplicateReply(_ first: FirstSend, _ request: Request.Message) throws -> Outcome {
        guard first.channelID == request.channelID else {
            throw error(.badRequest, "client_msg_id: already used on another channel")
        }
        return ok(.message(Response.Message(channelID: first.channelID, seq: first.seq, receivedAt: first.receivedAt,
                                            duplicate: true)))
    }
}

// MARK: - History

extension Handler {
    /// Bytes a message adds to an encoded page besides its ciphertext's base64: the fixed
    /// fields at their widest (three quoted ids, a 12-byte iv, three 16-digit integers,
    /// names, punctuation) come to 269; rounded up so the estimate never falls short.
    static let pageBytesPerMessage = 300
    /// The envelope of a `messages` result: `re` (≤ 64 scalars, escaped), type, has_more.
    static let pageEnvelopeBytes = 512

    /// One page in either direction. `$2` < seq < `$3`, at most `$4` rows, nearest to the
    /// side travel starts from. `size` estimates each row's share of the encoded page; the
    /// ciphertext of rows that the 1 MiB cap will leave out anyway is not read
    /// (`running - size` is what the page holds before the row).
    private static func pageQuery(_ name: String, order: String) -> PreparedStatement {
        PreparedStatement(name, """
            SELECT seq, sender_id, key_id, iv,
                   CASE WHEN running - size < $5 THEN ciphertext END,
                   ts, received_ms, size
            FROM (SELECT seq, sender_id, key_id, iv, ciphertext, ts, received_ms, size,
                         sum(size) OVER (ORDER BY seq \(order) ROWS UNBOUNDED PRECEDING) AS running
                  FROM (SELECT seq, sender_id, key_id, iv, ciphertext, ts,
                               (extract(epoch FROM received_at) * 1000)::bigint AS received_ms,
                               4 * ((octet_length(ciphertext) + 2) / 3) + \(pageBytesPerMessage) AS size
                        FROM messages
                        WHERE channel_id = $1 AND seq > $2 AND seq < $3
                        ORDER BY seq \(order) LIMIT $4) limited) sized
            ORDER BY seq \(order)
            """)
    }

    static let historyForwardQuery = pageQuery("history_forward", order: "ASC")
    static let historyBackwardQuery = pageQuery("history_backward", order: "DESC")

    /// `messages`: visible are only the messages after the member's join cut.
    ///
    /// With `after`: the first `limit` above max(after, cut) and below `before`; `has_more`
    /// = more of that range lie above the page. Otherwise: the newest `limit` below
    /// `before` (or the end) and above the cut; `has_more` = more lie below the page and
    /// above the cut. A page stops early with `has_more` true rather than pass 1 MiB, but
    /// always holds at least one message, so paging makes progress.
    func messages(_ request: Request.Messages) throws -> Outcome {
        if let limit = request.limit, !(1...Limits.historyMaxLimit).contains(limit) {
            throw error(.badRequest, "limit: must be 1...\(Limits.historyMaxLimit)")
        }
        let membership = try requireMember(request.channelID)
        let limit = request.effectiveLimit
        let forward = request.after != nil
        let lower = max(request.after ?? 0, membership.joinSeq)
        let upper = request.before.map(Int64.init) ?? Int64.max
        let byteBudget = Limits.pageByteCap - Self.pageEnvelopeBytes

        let rows = try db.execute(forward ? Self.historyForwardQuery : Self.historyBackwardQuery, [
            .id(request.channelID), .int(lower), .integer(upper), .int(limit + 1), .int(byteBudget),
        ]).rows

        var page: [MessageRecord] = []
        var bytes = 0
        var hasMore = false
        for row in rows {
            let size = try row.int(7)
            if page.count == limit || (!page.isEmpty && bytes + size > byteBudget) {
                hasMore = true
                break
            }
            guard let ciphertext = try row.optionalBytes(4) else {
                throw StoreError(.decodingFailed, detail: "a page row came without its ciphertext")
            }
            bytes += size
            page.append(MessageRecord(
                channelID: request.channelID, seq: try row.int(0), senderID: try row.id(1), keyID: try row.id(2),
                iv: try row.bytes(3), ciphertext: ciphertext, ts: try row.int(5), receivedAt: try row.int(6)))
        }
        if !forward { page.reverse() }
        return ok(.messages(Response.Messages(messages: page, hasMore: hasMore)))
    }
}
