// Server→client success results: `{"re","type":<request type>,...result fields}`.

/// The result of a request, one case per request type.
public enum Response: Sendable, Equatable {
    case signup(ChallengeIssued)
    case login(ChallengeIssued)
    case challenge(Challenge)
    case auth(Auth)
    case logout
    case user(User)
    case channelCreate(ChannelCreate)
    case channels(Channels)
    case channelMembers(ChannelMembers)
    case channelMembership(ChannelMembership)
    case channelAdd(MembershipChanged)
    case channelRemove(MembershipChanged)
    case key(Key)
    case keys(Keys)
    case message(Message)
    case messages(Messages)
    case subscribe(Subscribe)
    case unsubscribe(Unsubscribe)
    case ping(Ping)

    /// The wire `type` (the same as the request's).
    public var type: RequestType {
        switch self {
        case .signup: return .signup
        case .login: return .login
        case .challenge: return .challenge
        case .auth: return .auth
        case .logout: return .logout
        case .user: return .user
        case .channelCreate: return .channelCreate
        case .channels: return .channels
        case .channelMembers: return .channelMembers
        case .channelMembership: return .channelMembership
        case .channelAdd: return .channelAdd
        case .channelRemove: return .channelRemove
        case .key: return .key
        case .keys: return .keys
        case .message: return .message
        case .messages: return .messages
        case .subscribe: return .subscribe
        case .unsubscribe: return .unsubscribe
        case .ping: return .ping
        }
    }

    // MARK: Payloads

    /// `signup` and `login` results: a challenge encrypted to the account key.
    public struct ChallengeIssued: Sendable, Equatable {
        public var challengeID: ID
        /// RSA-OAEP ciphertext of 32 random bytes.
        public var challenge: [UInt8]
        /// Unix milliseconds.
        public var expiresAt: Int
        public init(challengeID: ID, challenge: [UInt8], expiresAt: Int) {
            self.challengeID = challengeID
            self.challenge = challenge
            self.expiresAt = expiresAt
        }
    }

    /// `challenge` result: the connection is authenticated.
    public struct Challenge: Sendable, Equatable {
        public var userID: ID
        public var username: String
        /// Opaque session token.
        public var session: String
        /// Unix milliseconds.
        public var sessionExpiresAt: Int
        /// Present only after a signup: base64url (unpadded) of 32 bytes, shown once.
        public var passkey: String?
        public init(userID: ID, username: String, session: String, sessionExpiresAt: Int, passkey: String? = nil) {
            self.userID = userID
            self.username = username
            self.session = session
            self.sessionExpiresAt = sessionExpiresAt
            self.passkey = passkey
        }
    }

    /// `auth` result.
    public struct Auth: Sendable, Equatable {
        public var userID: ID
        public var username: String
        /// Unix milliseconds.
        public var sessionExpiresAt: Int
        public init(userID: ID, username: String, sessionExpiresAt: Int) {
            self.userID = userID
            self.username = username
            self.sessionExpiresAt = sessionExpiresAt
        }
    }

    /// `user` result.
    public struct User: Sendable, Equatable {
        public var userID: ID
        public var username: String
        /// DER SPKI.
        public var publicKey: [UInt8]
        /// Unix milliseconds.
        public var createdAt: Int
        public init(userID: ID, username: String, publicKey: [UInt8], createdAt: Int) {
            self.userID = userID
            self.username = username
            self.publicKey = publicKey
            self.createdAt = createdAt
        }
    }

    /// `channel.create` result.
    public struct ChannelCreate: Sendable, Equatable {
        public var channelID: ID
        public var name: String
        public var members: [Member]
        public init(channelID: ID, name: String, members: [Member]) {
            self.channelID = channelID
            self.name = name
            self.members = members
        }
    }

    /// `channels` result.
    public struct Channels: Sendable, Equatable {
        public var channels: [ChannelSummary]
        public init(channels: [ChannelSummary]) { self.channels = channels }
    }

    /// `channel.members` result.
    public struct ChannelMembers: Sendable, Equatable {
        public var members: [Member]
        public var membershipVersion: Int
        public init(members: [Member], membershipVersion: Int) {
            self.members = members
            self.membershipVersion = membershipVersion
        }
    }

    /// `channel.membership` result: statements in ascending version.
    public struct ChannelMembership: Sendable, Equatable {
        public var statements: [MembershipStatement]
        public init(statements: [MembershipStatement]) { self.statements = statements }
    }

    /// `channel.add` / `channel.remove` result.
    public struct MembershipChanged: Sendable, Equatable {
        public var channelID: ID
        public var userID: ID
        public var membershipVersion: Int
        public init(channelID: ID, userID: ID, membershipVersion: Int) {
            self.channelID = channelID
            self.userID = userID
            self.membershipVersion = membershipVersion
        }
    }

    /// `key` result. `key` is written as `null` when the channel has no key.
    public struct Key: Sendable, Equatable {
        public var key: KeyRecord?
        public var rotationRequired: Bool
        public init(key: KeyRecord?, rotationRequired: Bool) {
            self.key = key
            self.rotationRequired = rotationRequired
        }
    }

    /// `keys` result.
    public struct Keys: Sendable, Equatable {
        public var keyID: ID
        /// Unix milliseconds.
        public var createdAt: Int
        /// Unix milliseconds.
        public var expiresAt: Int
        public init(keyID: ID, createdAt: Int, expiresAt: Int) {
            self.keyID = keyID
            self.createdAt = createdAt
            self.expiresAt = expiresAt
        }
    }

    /// `message` result, sent once the row is committed.
    public struct Message: Sendable, Equatable {
        public var channelID: ID
        public var seq: Int
        /// Unix milliseconds.
        public var receivedAt: Int
        /// True when this repeats the result of an earlier send with the same `client_msg_id`.
        public var duplicate: Bool
        public init(channelID: ID, seq: Int, receivedAt: Int, duplicate: Bool) {
            self.channelID = channelID
            self.seq = seq
            self.receivedAt = receivedAt
            self.duplicate = duplicate
        }
    }

    /// `messages` result: ascending by `seq`.
    public struct Messages: Sendable, Equatable {
        public var messages: [MessageRecord]
        public var hasMore: Bool
        public init(messages: [MessageRecord], hasMore: Bool) {
            self.messages = messages
            self.hasMore = hasMore
        }
    }

    /// One channel of the `subscribe` result.
    public struct SubscribedChannel: Sendable, Equatable {
        public var channelID: ID
        public var lastSeq: Int
        /// False when more than 1000 messages were missed and nothing is replayed.
        public var recovered: Bool
        public init(channelID: ID, lastSeq: Int, recovered: Bool) {
            self.channelID = channelID
            self.lastSeq = lastSeq
            self.recovered = recovered
        }
    }

    /// `subscribe` result.
    public struct Subscribe: Sendable, Equatable {
        public var channels: [SubscribedChannel]
        public init(channels: [SubscribedChannel]) { self.channels = channels }
    }

    /// `unsubscribe` result.
    public struct Unsubscribe: Sendable, Equatable {
        public var channelIDs: [ID]
        public init(channelIDs: [ID]) { self.channelIDs = channelIDs }
    }

    /// `ping` result.
    public struct Ping: Sendable, Equatable {
        /// Server time, unix milliseconds.
        public var time: Int
        public init(time: Int) { self.time = time }
    }
}

/// A success frame: `{"re","type",...}`.
public struct ResultFrame: Sendable, Equatable, FrameEncodable {
    /// The request's id.
    public var re: String
    public var response: Response

    public init(re: String, response: Response) {
        self.re = re
        self.response = response
    }


    /// Writes the frame.
    public func encode(into writer: inout JSONWriter) {
        writer.beginObject()
        writer.field("re", re)
        writer.field("type", response.type.rawValue)
        response.encodeFields(into: &writer)
        writer.endObject()
    }
}

extension Response {
    /// Writes the result's own fields (no braces, no `re`/`type`).
    func encodeFields(into writer: inout JSONWriter) {
        switch self {
        case .signup(let issued), .login(let issued):
            writer.field("challenge_id", issued.challengeID)
            writer.base64Field("challenge", issued.challenge)
            writer.field("expires_at", issued.expiresAt)
        case .challenge(let result):
            writer.field("user_id", result.userID)
            writer.field("username", result.username)
            writer.field("session", result.session)
            writer.field("session_expires_at", result.sessionExpiresAt)
            if let passkey = result.passkey { writer.field("passkey", passkey) }
        case .auth(let result):
            writer.field("user_id", result.userID)
            writer.field("username", result.username)
            writer.field("session_expires_at", result.sessionExpiresAt)
        case .logout:
            break
        case .user(let user):
            writer.field("user_id", user.userID)
            writer.field("username", user.username)
            writer.base64Field("public_key", user.publicKey)
            writer.field("created_at", user.createdAt)
        case .channelCreate(let result):
            writer.field("channel_id", result.channelID)
            writer.field("name", result.name)
            writeMembers(result.members, into: &writer)
        case .channels(let result):
            writer.key("channels")
            writer.beginArray()
            for channel in result.channels { channel.encode(into: &writer) }
            writer.endArray()
        case .channelMembers(let result):
            writeMembers(result.members, into: &writer)
            writer.field("membership_version", result.membershipVersion)
        case .channelMembership(let result):
            writer.key("statements")
            writer.beginArray()
            for statement in result.statements { statement.encode(into: &writer) }
            writer.endArray()
        case .channelAdd(let result), .channelRemove(let result):
            writer.field("channel_id", result.channelID)
            writer.field("user_id", result.userID)
            writer.field("membership_version", result.membershipVersion)
        case .key(let result):
            writer.key("key")
            if let key = result.key { key.encode(into: &writer) } else { writer.null() }
            writer.field("rotation_required", result.rotationRequired)
        case .keys(let result):
            writer.field("key_id", result.keyID)
            writer.field("created_at", result.createdAt)
            writer.field("expires_at", result.expiresAt)
        case .message(let result):
            writer.field("channel_id", result.channelID)
            writer.field("seq", result.seq)
            writer.field("received_at", result.receivedAt)
            writer.field("duplicate", result.duplicate)
        case .messages(let result):
            writer.key("messages")
            writer.beginArray()
            for message in result.messages { message.encode(into: &writer) }
            writer.endArray()
            writer.field("has_more", result.hasMore)
        case .subscribe(let result):
            writer.key("channels")
            writer.beginArray()
            for channel in result.channels {
                writer.beginObject()
                writer.field("channel_id", channel.channelID)
                writer.field("last_seq", channel.lastSeq)
                writer.field("recovered", channel.recovered)
                writer.endObject()
            }
            writer.endArray()
        case .unsubscribe(let result):
            writer.idArrayField("channel_ids", result.channelIDs)
        case .ping(let result):
            writer.field("time", result.time)
        }
    }

    private func writeMembers(_ members: [Member], into writer: inout JSONWriter) {
        writer.key("members")
        writer.beginArray()
        for member in members { member.encode(into: &writer) }
        writer.endArray()
    }

    /// Decodes the fields of a result of `type`.
    init(type: RequestType, reader r: FieldReader) throws(DecodeError) {
        switch type {
        case .signup, .login:
            let issued = ChallengeIssued(
                challengeID: try r.id("challenge_id"),
                challenge: try r.bytes("challenge"),
                expiresAt: try r.integer("expires_at"))
            self = type == .signup ? .signup(issued) : .login(issued)
        case .challenge:
            self = .challenge(
                Challenge(
                    userID: try r.id("user_id"),
                    username: try r.string("username"),
                    session: try r.string("session"),
                    sessionExpiresAt: try r.integer("session_expires_at"),
                    passkey: try r.optionalString("passkey")))
        case .auth:
            self = .auth(
                Auth(
                    userID: try r.id("user_id"),
                    username: try r.string("username"),
                    sessionExpiresAt: try r.integer("session_expires_at")))
        case .logout:
            self = .logout
        case .user:
            self = .user(
                User(
                    userID: try r.id("user_id"),
                    username: try r.string("username"),
                    publicKey: try r.bytes("public_key"),
                    createdAt: try r.integer("created_at")))
        case .channelCreate:
            self = .channelCreate(
                ChannelCreate(
                    channelID: try r.id("channel_id"),
                    name: try r.string("name"),
                    members: try r.objects("members") { (e) throws(DecodeError) in try Member(reader: e) }))
        case .channels:
            self = .channels(
                Channels(channels: try r.objects("channels") { (e) throws(DecodeError) in try ChannelSummary(reader: e) }))
        case .channelMembers:
            self = .channelMembers(
                ChannelMembers(
                    members: try r.objects("members") { (e) throws(DecodeError) in try Member(reader: e) },
                    membershipVersion: try r.integer("membership_version")))
        case .channelMembership:
            self = .channelMembership(
                ChannelMembership(
                    statements: try r.objects("statements") { (e) throws(DecodeError) in
                        try MembershipStatement(reader: e)
                    }))
        case .channelAdd, .channelRemove:
            let changed = MembershipChanged(
                channelID: try r.id("channel_id"),
                userID: try r.id("user_id"),
                membershipVersion: try r.integer("membership_version"))
            self = type == .channelAdd ? .channelAdd(changed) : .channelRemove(changed)
        case .key:
            let record: KeyRecord? = r.present("key") == nil ? nil : try KeyRecord(reader: r.object("key"))
            self = .key(Key(key: record, rotationRequired: try r.bool("rotation_required")))
        case .keys:
            self = .keys(
                Keys(
                    keyID: try r.id("key_id"),
                    createdAt: try r.integer("created_at"),
                    expiresAt: try r.integer("expires_at")))
        case .message:
            self = .message(
                Message(
                    channelID: try r.id("channel_id"),
                    seq: try r.integer("seq"),
                    receivedAt: try r.integer("received_at"),
                    duplicate: try r.bool("duplicate")))
        case .messages:
            self = .messages(
                Messages(
                    messages: try r.objects("messages") { (e) throws(DecodeError) in try MessageRecord(reader: e) },
                    hasMore: try r.bool("has_more")))
        case .subscribe:
            self = .subscribe(
                Subscribe(
                    channels: try r.objects("channels") { (e) throws(DecodeError) in
                        SubscribedChannel(
                            channelID: try e.id("channel_id"),
                            lastSeq: try e.integer("last_seq"),
                            recovered: try e.bool("recovered"))
                    }))
        case .unsubscribe:
            self = .unsubscribe(Unsubscribe(channelIDs: try r.ids("channel_ids")))
        case .ping:
            self = .ping(Ping(time: try r.integer("time")))
        }
    }
}
