import Foundation
import ParleyProtocol
import ParleyStore

// `message` (send) and `messages` (history). Runs on a database worker thread, on the
// worker's connection; every value is a bind parameter.
//
// Sends are stored in batches (group commit): the `message` requests waiting on one worker
// go to PostgreSQL as one call of `parley_send_messages` (migrations/0003) — one statement,
// one transaction, one WAL flush — and none is answered before that statement committed.
// For each send, in order, under the channel's row lock, the function checks (§7, §10):
//   1. not_member     — the requester is a current member (existence does not leak);
//   2. duplicate      — (sender, client_msg_id) already stored: the first result with
//                       `duplicate: true` on this channel, `bad_request` on another one,
//                       whatever the retry carries (so a retry never meets checks 3–6);
//   3. too_large      — the ciphertext is longer than the relay's maximum;
//   4. key_expired    — `key_id` is the channel's newest key and `now < expires_at`;
//   5. bad_timestamp  — `ts` within ±window of the server clock when the batch started;
//   6. bad_request    — a repeated (`key_id`, `iv`).
// This is the order the contract lists them in §7 (key, ts, iv, size) except for the size,
// which comes before the key because it needs nothing but the frame. A rotation or a
// membership change that commits before the batch takes the channel's lock is seen.

/// A `message` request on its way to a batch.
public struct MessageSend: Sendable {
    public var id: String
    public var context: RequestContext
    public var request: Request.Message

    public init(id: String, context: RequestContext, request: Request.Message) {
        self.id = id
        self.context = context
        self.request = request
    }
}

extension RelayService {
    /// The form that also announces the stored messages to other nodes (migration 0004).
    static let sendMessagesQuery = PreparedStatement("send_messages", """
        SELECT ord, outcome, seq, received_ms, first_channel, current_key, membership_version
        FROM parley_send_messages($11::uuid, $1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::bytea[],
                                  $6::bytea[], $7::bigint[], $8::bigint, $9::bigint, $10::integer)
        """)

    /// Stores a batch of sends in one transaction and answers each, in order. A batch the
    /// database refuses as a whole (never expected) is retried one send at a time, so one
    /// bad send cannot sink the others; an outage answers every send `unavailable`.
    public func send(_ batch: [MessageSend], on db: PostgresConnection) -> [Outcome] {
        let handlers = batch.map { Handler(re: $0.id, context: $0.context, db: db, configuration: configuration) }
        // The decoder guarantees these (frame shape); a request built in code is held to them too.
        var outcomes = [Outcome?](repeating: nil, count: batch.count)
        var pending: [Int] = []
        for (index, send) in batch.enumerated() {
            let handler = handlers[index]
            if send.context.userID == nil {
                outcomes[index] = handler.fail(.unauthenticated, "authenticate first")
            } else if send.request.iv.count != Limits.ivBytes {
                outcomes[index] = handler.fail(.badRequest, "iv: must be \(Limits.ivBytes) bytes")
            } else if send.request.ciphertext.count < Limits.minCiphertextBytes {
                outcomes[index] = handler.fail(.badRequest, "ciphertext: must be at least \(Limits.minCiphertextBytes) bytes")
            } else {
                pending.append(index)
            }
        }
        guard !pending.isEmpty else { return outcomes.map { $0! } }
        let requests = pending.map { batch[$0].request }
        let senders = pending.map { batch[$0].context.userID! }
        do {
            let rows = try db.execute(Self.sendMessagesQuery, [
                .array(requests.map(\.channelID.string)), .array(senders.map(\.string)),
                .array(requests.map(\.clientMsgID.string)), .array(requests.map(\.keyID.string)),
                .byteaArray(requests.map(\.iv)), .byteaArray(requests.map(\.ciphertext)),
                .integerArray(requests.map(\.ts)), .int(Int(Date().timeIntervalSince1970)),
                .int(configuration.timestampWindowSeconds), .int(configuration.maxCiphertextBytes),
                .id(batch[pending[0]].context.nodeID),
            ]).rows
            guard rows.count == pending.count else {
                throw StoreError(.decodingFailed, detail: "parley_send_messages answered \(rows.count) of \(pending.count) sends")
            }
            for (position, row) in rows.enumerated() {
                let index = pending[position]
                guard try row.int(0) == position + 1 else {
                    throw StoreError(.decodingFailed, detail: "parley_send_messages answered out of order")
                }
                outcomes[index] = try handlers[index].sendOutcome(row, request: batch[index].request,
                                                                  sender: senders[position])
            }
        } catch let failure as StoreError where failure.isTransient {
            for index in pending {
                outcomes[index] = Outcome(ErrorFrame(re: batch[index].id, code: .unavailable,
                                                     message: "database unavailable, retry", retryAfterMs: 1000))
            }
        } catch {
            if pending.count > 1 {
                for index in pending { outcomes[index] = send([batch[index]], on: db)[0] }
            } else {
                let index = pending[0]
                outcomes[index] = internalError(error, request: .message(batch[index].request), id: batch[index].id,
                                                context: batch[index].context)
            }
        }
        return outcomes.map { $0! }
    }
}

extension Handler {
    static let firstSendQuery = PreparedStatement("message_first_send", """
        SELECT channel_id, seq, (extract(epoch FROM received_at) * 1000)::bigint
        FROM messages WHERE sender_id = $1 AND client_msg_id = $2
        """)

    /// The reply to one send from its row of `parley_send_messages`; the batch has committed.
    fileprivate func sendOutcome(_ row: Row, request: Request.Message, sender: ID) throws -> Outcome {
        switch try row.string(1) {
        case "stored":
            let seq = try row.int(2), receivedAt = try row.int(3)
            let record = MessageRecord(
                channelID: request.channelID, seq: seq, senderID: sender, keyID: request.keyID,
                iv: request.iv, ciphertext: request.ciphertext, ts: request.ts, receivedAt: receivedAt)
            return ok(.message(Response.Message(channelID: request.channelID, seq: seq, receivedAt: receivedAt,
                                                duplicate: false)),
                      effects: [.message(record, membershipVersion: try row.optionalInt64(6).map { Int($0) })])
        case "duplicate":
            return duplicateReply(FirstSend(channelID: try row.id(4), seq: try row.int(2), receivedAt: try row.int(3)),
                                  request)
        case "not_member":
            return fail(.notMember, "not a member of this channel")
        case "too_large":
            return fail(.tooLarge, "ciphertext is longer than \(configuration.maxCiphertextBytes) bytes")
        case "key_expired":
            let currentKeyID = try row.optionalID(5)
            var frame = error(.keyExpired, currentKeyID == nil
                              ? "the channel has no key yet: rotate"
                              : "key_id is not the channel's current unexpired key")
            frame.currentKeyID = currentKeyID
            return Outcome(frame)
        case "bad_timestamp":
            return fail(.badTimestamp, "ts is more than \(configuration.timestampWindowSeconds) s from the server clock")
        case "iv_reused":
            return fail(.badRequest, "iv: already used with this key_id")
        case "conflict":
            // A send of the same client_msg_id on another channel committed meanwhile.
            if let first = try firstSend(sender: sender, clientMsgID: request.clientMsgID) {
                return duplicateReply(first, request)
            }
            throw StoreError(.queryFailed, detail: "a send met a conflicting row that is not there")
        case let other:
            throw StoreError(.decodingFailed, detail: "parley_send_messages answered \(other)")
        }
    }

    /// The stored result of the first send of a (sender, client_msg_id).
    private struct FirstSend {
        var channelID: ID
        var seq: Int
        var receivedAt: Int
    }

    private func firstSend(sender: ID, clientMsgID: ID) throws -> FirstSend? {
        guard let row = try db.execute(Self.firstSendQuery, [.id(sender), .id(clientMsgID)]).first else { return nil }
        return FirstSend(channelID: try row.id(0), seq: try row.int(1), receivedAt: try row.int(2))
    }

    /// The first result again, or `bad_request` when the id was used on another channel.
    private func duplicateReply(_ first: FirstSend, _ request: Request.Message) -> Outcome {
        guard first.channelID == request.channelID else {
            return fail(.badRequest, "client_msg_id: already used on another channel")
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
