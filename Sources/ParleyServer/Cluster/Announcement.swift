import ParleyProtocol
import ParleyStore

/// What a node tells the other nodes after a commit, through PostgreSQL's `NOTIFY` on
/// `parley_events` (migration 0004): ids and seq ranges only, never ciphertext or keys.
/// Listeners load what the announcement names from the tables.
///
/// Payloads are one line of space-separated fields, the kind first and the announcing
/// node second:
///
///     m <node> <channel>:<first>-<last> ...
///     k <node> <channel> <key_id> <at_seq>
///     v <node> <channel> <version> <at_seq> <user|-> <added|removed> <by>
///
/// `at_seq` is the channel's `last_seq` when a key record or membership change committed:
/// a listener delivers it after that message and before the next one. A membership
/// announcement with user `-` is a channel creation: every member of version 1 but `by`
/// was added.
enum Announcement: Equatable, Sendable {
    /// Messages `first...last` of a channel, stored by one group commit.
    struct Range: Equatable, Sendable {
        var channelID: ID
        var first: Int
        var last: Int
    }

    case messages(node: ID, [Range])
    case key(node: ID, channelID: ID, keyID: ID, atSeq: Int)
    case member(node: ID, channelID: ID, version: Int, atSeq: Int, userID: ID?, action: Event.Member.Action, by: ID)

    /// The NOTIFY channel.
    static let channel = "parley_events"

    var node: ID {
        switch self {
        case .messages(let node, _), .key(let node, _, _, _), .member(let node, _, _, _, _, _, _): return node
        }
    }

    /// The payload text (message ranges are written by SQL, `parley_announce_messages`;
    /// this form is for tests and symmetry).
    var payload: String {
        switch self {
        case .messages(let node, let ranges):
            return (["m", node.string] + ranges.map { "\($0.channelID.string):\($0.first)-\($0.last)" })
                .joined(separator: " ")
        case .key(let node, let channelID, let keyID, let atSeq):
            return "k \(node.string) \(channelID.string) \(keyID.string) \(atSeq)"
        case .member(let node, let channelID, let version, let atSeq, let userID, let action, let by):
            return "v \(node.string) \(channelID.string) \(version) \(atSeq) \(userID?.string ?? "-") \(action.rawValue) \(by.string)"
        }
    }

    /// Reads a payload; nil for anything malformed (a listener ignores it, and the tick's
    /// gap check still finds whatever it would have named).
    init?(payload: String) {
        let fields = payload.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        guard fields.count >= 2, let node = ID(fields[1]) else { return nil }
        switch fields[0] {
        case "m":
            var ranges: [Range] = []
            for item in fields.dropFirst(2) {
                let parts = item.split(separator: ":", omittingEmptySubsequences: false)
                guard parts.count == 2, let channelID = ID(String(parts[0])) else { return nil }
                let bounds = parts[1].split(separator: "-", omittingEmptySubsequences: false)
                guard bounds.count == 2, let first = Self.number(bounds[0]), let last = Self.number(bounds[1]),
                      first >= 1, first <= last else { return nil }
                ranges.append(Range(channelID: channelID, first: first, last: last))
            }
            guard !ranges.isEmpty else { return nil }
            self = .messages(node: node, ranges)
        case "k":
            guard fields.count == 5, let channelID = ID(fields[2]), let keyID = ID(fields[3]),
                  let atSeq = Self.number(fields[4]) else { return nil }
            self = .key(node: node, channelID: channelID, keyID: keyID, atSeq: atSeq)
        case "v":
            guard fields.count == 8, let channelID = ID(fields[2]), let version = Self.number(fields[3]), version >= 1,
                  let atSeq = Self.number(fields[4]),
                  let action = Event.Member.Action(rawValue: fields[6]), let by = ID(fields[7]) else { return nil }
            let userID = fields[5] == "-" ? nil : ID(fields[5])
            guard userID != nil || fields[5] == "-" else { return nil }
            self = .member(node: node, channelID: channelID, version: version, atSeq: atSeq, userID: userID,
                           action: action, by: by)
        default:
            return nil
        }
    }

    /// A non-negative decimal as SQL prints it: digits only (no sign), at most 18 of them.
    private static func number<S: StringProtocol>(_ text: S) -> Int? {
        guard !text.isEmpty, text.count <= 18, text.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
        return Int(text)
    }
}

/// The announcement statement, run inside the committing transaction: PostgreSQL sends it
/// at commit, and not at all on rollback.
enum AnnounceSQL {
    static let notify = PreparedStatement("announce", "SELECT pg_notify('\(Announcement.channel)', $1)")
}

extension PostgresConnection {
    /// Announces a commit to the other nodes; call inside the transaction that commits it.
    func announce(_ announcement: Announcement) throws {
        try execute(AnnounceSQL.notify, [.text(announcement.payload)])
    }
}
