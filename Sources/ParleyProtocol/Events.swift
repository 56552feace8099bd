// Unsolicited server→client frames: `{"type":"event.<name>",...}` with no `re`.

/// The event types of the contract.
public enum EventType: String, Sendable, CaseIterable {
    case message = "event.message"
    case synced = "event.synced"
    case key = "event.key"
    case member = "event.member"
}

/// An event pushed to subscribers.
public enum Event: Sendable, Equatable, FrameEncodable {
    /// A stored message (replayed or live).
    case message(MessageRecord)
    /// End of a subscribe replay.
    case synced(Synced)
    /// A new key record, with the recipient's own wrapped copy.
    case key(KeyRecord)
    /// A membership change.
    case member(Member)

    /// `event.synced`: the last seq replayed, or the larger of `after` and the join cut.
    public struct Synced: Sendable, Equatable {
        public var channelID: ID
        public var seq: Int
        public init(channelID: ID, seq: Int) {
            self.channelID = channelID
            self.seq = seq
        }
    }

    /// `event.member`.
    public struct Member: Sendable, Equatable {
        public enum Action: String, Sendable, CaseIterable {
            case added
            case removed
        }
        public var channelID: ID
        /// The member added or removed.
        public var userID: ID
        public var action: Action
        /// Who signed the change.
        public var by: ID
        public var membership: MembershipStatement
        public init(channelID: ID, userID: ID, action: Action, by: ID, membership: MembershipStatement) {
            self.channelID = channelID
            self.userID = userID
            self.action = action
            self.by = by
            self.membership = membership
        }
    }

    /// The wire `type`.
    public var type: EventType {
        switch self {
        case .message: return .message
        case .synced: return .synced
        case .key: return .key
        case .member: return .member
        }
    }


    /// Writes the frame.
    public func encode(into writer: inout JSONWriter) {
        writer.beginObject()
        writer.field("type", type.rawValue)
        switch self {
        case .message(let message):
            message.encodeFields(into: &writer)
        case .synced(let synced):
            writer.field("channel_id", synced.channelID)
            writer.field("seq", synced.seq)
        case .key(let record):
            record.encodeFields(into: &writer)
        case .member(let member):
            writer.field("channel_id", member.channelID)
            writer.field("user_id", member.userID)
            writer.field("action", member.action.rawValue)
            writer.field("by", member.by)
            writer.key("membership")
            member.membership.encode(into: &writer)
        }
        writer.endObject()
    }

    /// Decodes the fields of an event of `type`.
    public init(type: EventType, reader r: FieldReader) throws(DecodeError) {
        switch type {
        case .message:
            self = .message(try MessageRecord(reader: r))
        case .synced:
            self = .synced(Synced(channelID: try r.id("channel_id"), seq: try r.integer("seq")))
        case .key:
            self = .key(try KeyRecord(reader: r))
        case .member:
            let channelID = try r.id("channel_id")
            let userID = try r.id("user_id")
            guard let action = Member.Action(rawValue: try r.string("action")) else {
                throw DecodeError(field: r.pathOf("action"), reason: "expected \"added\" or \"removed\"")
            }
            self = .member(
                Member(
                    channelID: channelID, userID: userID, action: action, by: try r.id("by"),
                    membership: try MembershipStatement(reader: r.object("membership"))))
        }
    }
}
