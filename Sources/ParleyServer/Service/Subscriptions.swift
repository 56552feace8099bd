import ParleyProtocol
import ParleyStore

/// Where one channel's subscription starts, as the worker read it from the database. The
/// service thread answers `subscribe` with `channelID`, `lastSeq` and `recovered`, then
/// replays `(replayFrom, lastSeq]` page by page through `RelayService.replay` and hands
/// over to live messages from `lastSeq + 1`.
public struct SubscriptionStart: Sendable, Equatable {
    public var channelID: ID
    /// The channel's `last_seq` when the subscription started: the replay ends there and
    /// live delivery begins after it.
    public var lastSeq: Int
    /// False when more than `Limits.replayMax` messages were missed: nothing is replayed,
    /// no `event.synced` is sent.
    public var recovered: Bool
    /// Where replay starts (exclusive): max(after, join cut); nil when nothing is to be
    /// replayed (no `after`, or not recovered).
    public var replayFrom: Int?
    /// The seq `event.synced` carries when nothing is replayed: max(after, cut); nil when no
    /// `event.synced` is due (no `after`, or not recovered).
    public var syncedSeq: Int?
    /// The channel's newest key and membership version in the same snapshot: where this
    /// node's feed of the channel starts (`ChannelFeed.start`).
    public var currentKeyID: ID?
    public var membershipVersion = 0

    public init(channelID: ID, lastSeq: Int, recovered: Bool, replayFrom: Int? = nil, syncedSeq: Int? = nil,
                currentKeyID: ID? = nil, membershipVersion: Int = 0) {
        self.channelID = channelID
        self.lastSeq = lastSeq
        self.recovered = recovered
        self.replayFrom = replayFrom
        self.syncedSeq = syncedSeq
        self.currentKeyID = currentKeyID
        self.membershipVersion = membershipVersion
    }

    /// The start of a subscription to a channel at `lastSeq` by a member whose join cut is
    /// `joinSeq`, resuming after `after` (nil: live only). `after` is at most `lastSeq`.
    /// The cut applies to the replay and to the count of missed messages alike (§10).
    public static func plan(channelID: ID, lastSeq: Int, joinSeq: Int, after: Int?) -> SubscriptionStart {
        guard let after else { return SubscriptionStart(channelID: channelID, lastSeq: lastSeq, recovered: true) }
        let start = max(after, joinSeq)
        guard lastSeq - start <= Limits.replayMax else {
            return SubscriptionStart(channelID: channelID, lastSeq: lastSeq, recovered: false)
        }
        return SubscriptionStart(channelID: channelID, lastSeq: lastSeq, recovered: true, replayFrom: start, syncedSeq: start)
    }
}

extension RelayService {
    /// Every requested channel the user is a member of, with its `last_seq` and the user's
    /// join cut, read by one statement (one snapshot).
    static let subscriptionStateQuery = PreparedStatement("subscribe_state", """
        SELECT c.id, c.last_seq, m.join_seq, c.current_key_id, c.membership_version
        FROM channels c JOIN channel_members m ON m.channel_id = c.id AND m.user_id = $2
        WHERE c.id = ANY ($1::uuid[])
        """)

    /// At most `$4` rows, and no more rows once `$5` bytes of ciphertext came before (the
    /// first row always comes): a page of 64 KiB messages stays a few hundred KiB.
    static let replayQuery = PreparedStatement("subscribe_replay", """
        SELECT seq, sender_id, key_id, iv, ciphertext, ts, received_ms
        FROM (SELECT seq, sender_id, key_id, iv, ciphertext, ts,
                     (extract(epoch FROM received_at) * 1000)::bigint AS received_ms,
                     sum(octet_length(ciphertext)) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING)
                         - octet_length(ciphertext) AS before
              FROM messages WHERE channel_id = $1 AND seq > $2 AND seq <= $3
              ORDER BY seq LIMIT $4) page
        WHERE before < $5
        ORDER BY seq
        """)

    /// Checks membership of every channel (the whole request fails with not_member if one
    /// isn't the user's) and `after` ≤ last_seq (bad_request otherwise); reads each
    /// channel's last_seq and the user's join cut in one snapshot. Runs on a worker thread.
    ///
    /// The result lists the channels in the order of the request; a channel named twice
    /// appears twice (the later entry replaces the earlier one, as a second `subscribe`
    /// would). Membership is checked for all channels before any `after`.
    public func startSubscriptions(_ request: Request.Subscribe, id: String, context: RequestContext,
                                   on db: PostgresConnection) -> Result<[SubscriptionStart], ErrorFrame> {
        workerResult(id: id) {
            guard let user = context.userID else {
                throw ErrorFrame(re: id, code: .unauthenticated, message: "authenticate first")
            }
            if request.channels.isEmpty { return [] }
            let channelIDs = request.channels.map(\.channelID.string)
            let rows = try db.execute(Self.subscriptionStateQuery, [.array(channelIDs), .id(user)]).rows
            var state: [ID: (lastSeq: Int, joinSeq: Int, keyID: ID?, version: Int)] = [:]
            for row in rows {
                state[try row.id(0)] = (try row.int(1), try row.int(2), try row.optionalID(3), try row.int(4))
            }
            for channel in request.channels where state[channel.channelID] == nil {
                throw ErrorFrame(re: id, code: .notMember, message: "not a member of channel \(channel.channelID)")
            }
            return try request.channels.map { channel in
                guard let entry = state[channel.channelID] else {
                    throw ErrorFrame(re: id, code: .notMember, message: "not a member of channel \(channel.channelID)")
                }
                let (lastSeq, joinSeq, keyID, version) = entry
                if let after = channel.after, after > lastSeq {
                    throw ErrorFrame(re: id, code: .badRequest,
                                     message: "channels.after: \(after) is above the channel's last_seq \(lastSeq)")
                }
                var start = SubscriptionStart.plan(channelID: channel.channelID, lastSeq: lastSeq, joinSeq: joinSeq,
                                                   after: channel.after)
                start.currentKeyID = keyID
                start.membershipVersion = version
                return start
            }
        }
    }

    /// Up to `limit` stored messages of a channel with after < seq ≤ through, ascending,
    /// stopping once `byteBudget` bytes of ciphertext are in (at least one message) — the
    /// replay is produced page by page as the socket drains. Runs on a worker thread.
    public func replay(channelID: ID, after: Int, through: Int, limit: Int, byteBudget: Int = 256 * 1024,
                       on db: PostgresConnection) -> Result<[MessageRecord], ErrorFrame> {
        workerResult(id: nil) {
            guard limit > 0, after < through else { return [] }
            return try db.execute(Self.replayQuery, [.id(channelID), .int(after), .int(through), .int(limit),
                                                     .int(byteBudget)]).rows.map {
                row in
                MessageRecord(
                    channelID: channelID, seq: try row.int(0), senderID: try row.id(1), keyID: try row.id(2),
                    iv: try row.bytes(3), ciphertext: try row.bytes(4), ts: try row.int(5), receivedAt: try row.int(6))
            }
        }
    }

    /// Maps failures as `handle` does: a database outage is `unavailable` with
    /// `retry_after_ms`, an `ErrorFrame` is itself, anything else `internal`.
    private func workerResult<T>(id: String?, _ body: () throws -> T) -> Result<T, ErrorFrame> {
        do {
            return .success(try body())
        } catch let error as StoreError where error.isTransient {
            return .failure(ErrorFrame(re: id, code: .unavailable, message: "database unavailable, retry",
                                       retryAfterMs: 1000))
        } catch let error as ErrorFrame {
            return .failure(error)
        } catch {
            return .failure(ErrorFrame(re: id, code: .internal, message: "internal error, retry", retryAfterMs: 1000))
        }
    }
}
