import ParleyEncoding
// Client→server requests (§4–§8): `{"id","type",...fields}`.

/// The request types of the contract. A success result carries the same `type`.
public enum RequestType: String, Sendable, CaseIterable {
    case signup
    case login
    case challenge
    case auth
    case logout
    case user
    case channelCreate = "channel.create"
    case channels
    case channelMembers = "channel.members"
    case channelMembership = "channel.membership"
    case channelAdd = "channel.add"
    case channelRemove = "channel.remove"
    case key
    case keys
    case message
    case messages
    case subscribe
    case unsubscribe
    case ping

    /// Only these work before authentication; the rest get `unauthenticated`.
    public var allowedUnauthenticated: Bool {
        switch self {
        case .signup, .challenge, .login, .auth, .ping: return true
        default: return false
        }
    }
}

/// A request with its typed fields.
public enum Request: Sendable, Equatable {
    case signup(Signup)
    case login(Login)
    case challenge(Challenge)
    case auth(Auth)
    case logout
    case user(User)
    case channelCreate(ChannelCreate)
    case channels
    case channelMembers(ChannelMembers)
    case channelMembership(ChannelMembership)
    case channelAdd(MembershipChange)
    case channelRemove(MembershipChange)
    case key(Key)
    case keys(Keys)
    case message(Message)
    case messages(Messages)
    case subscribe(Subscribe)
    case unsubscribe(Unsubscribe)
    case ping

    /// The wire `type`.
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

    /// `signup`. Both fields stay raw: their format is checked after the frame shape
    /// (`invalid_username`, `invalid_key`).
    public struct Signup: Sendable, Equatable {
        public var username: String
        /// Base64 of the DER SPKI, as sent.
        public var publicKey: String
        public init(username: String, publicKey: String) {
            self.username = username
            self.publicKey = publicKey
        }
        /// A signup for a DER SPKI public key.
        public init(username: String, publicKeyDER: [UInt8]) {
            self.init(username: username, publicKey: Base64.encode(publicKeyDER))
        }
    }

    /// `login`. The passkey stays raw (a malformed one is `auth_failed` later).
    public struct Login: Sendable, Equatable {
        public var username: String
        public var passkey: String
        public init(username: String, passkey: String) {
            self.username = username
            self.passkey = passkey
        }
    }

    /// `challenge`: the 32-byte SHA-256 answer.
    public struct Challenge: Sendable, Equatable {
        public var challengeID: ID
        public var answer: [UInt8]
        public init(challengeID: ID, answer: [UInt8]) {
            self.challengeID = challengeID
            self.answer = answer
        }
    }

    /// `auth` with an existing session token (kept raw).
    public struct Auth: Sendable, Equatable {
        public var session: String
        public init(session: String) { self.session = session }
    }

    /// `user`: by username or by user id, exactly one.
    public enum User: Sendable, Equatable {
        case username(String)
        case userID(ID)
    }

    /// `channel.create` with membership statement version 1.
    public struct ChannelCreate: Sendable, Equatable {
        public var channelID: ID
        /// 1...64 Unicode scalar values.
        public var name: String
        public var membership: MembershipStatement
        public init(channelID: ID, name: String, membership: MembershipStatement) {
            self.channelID = channelID
            self.name = name
            self.membership = membership
        }
    }

    /// `channel.members`.
    public struct ChannelMembers: Sendable, Equatable {
        public var channelID: ID
        public init(channelID: ID) { self.channelID = channelID }
    }

    /// `channel.membership`, optionally only the statements after a known version.
    public struct ChannelMembership: Sendable, Equatable {
        public var channelID: ID
        public var afterVersion: Int?
        public init(channelID: ID, afterVersion: Int? = nil) {
            self.channelID = channelID
            self.afterVersion = afterVersion
        }
    }

    /// `channel.add` / `channel.remove`.
    public struct MembershipChange: Sendable, Equatable {
        public var channelID: ID
        /// The member added or removed.
        public var userID: ID
        public var membership: MembershipStatement
        public init(channelID: ID, userID: ID, membership: MembershipStatement) {
            self.channelID = channelID
            self.userID = userID
            self.membership = membership
        }
    }

    /// `key`: the newest key, or a specific one.
    public struct Key: Sendable, Equatable {
        public var channelID: ID
        public var keyID: ID?
        public init(channelID: ID, keyID: ID? = nil) {
            self.channelID = channelID
            self.keyID = keyID
        }
    }

    /// `keys`: store a new key record with one wrapped copy per member.
    public struct Keys: Sendable, Equatable {
        public var channelID: ID
        public var keyID: ID
        /// Written as `null` for a channel's first key.
        public var previousKeyID: ID?
        public var membershipVersion: Int
        /// 32 bytes.
        public var digest: [UInt8]
        public var sig: [UInt8]
        public var encryptedKeys: [WrappedKey]
        public init(
            channelID: ID, keyID: ID, previousKeyID: ID?, membershipVersion: Int, digest: [UInt8],
            sig: [UInt8], encryptedKeys: [WrappedKey]
        ) {
            self.channelID = channelID
            self.keyID = keyID
            self.previousKeyID = previousKeyID
            self.membershipVersion = membershipVersion
            self.digest = digest
            self.sig = sig
            self.encryptedKeys = encryptedKeys
        }
        /// The text the creator signs.
        public var signedText: [UInt8] {
            SignedText.keyRecord(
                channelID: channelID, keyID: keyID, previousKeyID: previousKeyID,
                membershipVersion: membershipVersion, digest: digest)
        }
    }

    /// `message`: send one encrypted message.
    public struct Message: Sendable, Equatable {
        public var channelID: ID
        public var keyID: ID
        /// 12 bytes.
        public var iv: [UInt8]
        /// At least 16 bytes (the maximum is a server setting, `too_large`).
        public var ciphertext: [UInt8]
        /// Unix seconds.
        public var ts: Int
        public var clientMsgID: ID
        public init(channelID: ID, keyID: ID, iv: [UInt8], ciphertext: [UInt8], ts: Int, clientMsgID: ID) {
            self.channelID = channelID
            self.keyID = keyID
            self.iv = iv
            self.ciphertext = ciphertext
            self.ts = ts
            self.clientMsgID = clientMsgID
        }
    }

    /// `messages`: a history page.
    public struct Messages: Sendable, Equatable {
        public var channelID: ID
        public var after: Int?
        public var before: Int?
        /// 1...200 when given.
        public var limit: Int?
        public init(channelID: ID, after: Int? = nil, before: Int? = nil, limit: Int? = nil) {
            self.channelID = channelID
            self.after = after
            self.before = before
            self.limit = limit
        }
        /// `limit`, or the default of 50.
        public var effectiveLimit: Int { limit ?? Limits.historyDefaultLimit }
    }

    /// One channel of a `subscribe` request.
    public struct SubscribeChannel: Sendable, Equatable {
        public var channelID: ID
        /// Replay the messages with `seq > after`; nil for live messages only.
        public var after: Int?
        public init(channelID: ID, after: Int? = nil) {
            self.channelID = channelID
            self.after = after
        }
    }

    /// `subscribe`.
    public struct Subscribe: Sendable, Equatable {
        public var channels: [SubscribeChannel]
        public init(channels: [SubscribeChannel]) { self.channels = channels }
    }

    /// `unsubscribe`.
    public struct Unsubscribe: Sendable, Equatable {
        public var channelIDs: [ID]
        public init(channelIDs: [ID]) { self.channelIDs = channelIDs }
    }
}

/// A request with its id: `{"id","type",...}`.
public struct RequestFrame: Sendable, Equatable, FrameEncodable {
    /// Client-chosen, 1...64 Unicode scalar values.
    public var id: String
    public var request: Request

    public init(id: String, request: Request) {
        self.id = id
        self.request = request
    }


    /// Writes the frame.
    public func encode(into writer: inout JSONWriter) {
        writer.beginObject()
        writer.field("id", id)
        writer.field("type", request.type.rawValue)
        request.encodeFields(into: &writer)
        writer.endObject()
    }

    /// Decodes a request under the §10 order of checks; see `RequestDecoder`.
    public static func decode(_ bytes: [UInt8]) throws(RequestRejection) -> RequestFrame {
        try RequestDecoder.decode(bytes).get()
    }
}

extension Request {
    /// Writes the type's own fields (no braces, no `id`/`type`).
    func encodeFields(into writer: inout JSONWriter) {
        switch self {
        case .signup(let signup):
            writer.field("username", signup.username)
            writer.field("public_key", signup.publicKey)
        case .login(let login):
            writer.field("username", login.username)
            writer.field("passkey", login.passkey)
        case .challenge(let challenge):
            writer.field("challenge_id", challenge.challengeID)
            writer.base64Field("answer", challenge.answer)
        case .auth(let auth):
            writer.field("session", auth.session)
        case .logout, .channels, .ping:
            break
        case .user(.username(let username)):
            writer.field("username", username)
        case .user(.userID(let userID)):
            writer.field("user_id", userID)
        case .channelCreate(let create):
            writer.field("channel_id", create.channelID)
            writer.field("name", create.name)
            writer.key("membership")
            create.membership.encode(into: &writer)
        case .channelMembers(let members):
            writer.field("channel_id", members.channelID)
        case .channelMembership(let membership):
            writer.field("channel_id", membership.channelID)
            if let after = membership.afterVersion { writer.field("after_version", after) }
        case .channelAdd(let change), .channelRemove(let change):
            writer.field("channel_id", change.channelID)
            writer.field("user_id", change.userID)
            writer.key("membership")
            change.membership.encode(into: &writer)
        case .key(let key):
            writer.field("channel_id", key.channelID)
            if let keyID = key.keyID { writer.field("key_id", keyID) }
        case .keys(let keys):
            writer.field("channel_id", keys.channelID)
            writer.field("key_id", keys.keyID)
            writer.nullableField("previous_key_id", keys.previousKeyID)
            writer.field("membership_version", keys.membershipVersion)
            writer.base64Field("digest", keys.digest)
            writer.base64Field("sig", keys.sig)
            writer.key("encrypted_keys")
            writer.beginArray()
            for wrapped in keys.encryptedKeys { wrapped.encode(into: &writer) }
            writer.endArray()
        case .message(let message):
            writer.field("channel_id", message.channelID)
            writer.field("key_id", message.keyID)
            writer.base64Field("iv", message.iv)
            writer.base64Field("ciphertext", message.ciphertext)
            writer.field("ts", message.ts)
            writer.field("client_msg_id", message.clientMsgID)
        case .messages(let messages):
            writer.field("channel_id", messages.channelID)
            if let after = messages.after { writer.field("after", after) }
            if let before = messages.before { writer.field("before", before) }
            if let limit = messages.limit { writer.field("limit", limit) }
        case .subscribe(let subscribe):
            writer.key("channels")
            writer.beginArray()
            for channel in subscribe.channels {
                writer.beginObject()
                writer.field("channel_id", channel.channelID)
                if let after = channel.after { writer.field("after", after) }
                writer.endObject()
            }
            writer.endArray()
        case .unsubscribe(let unsubscribe):
            writer.idArrayField("channel_ids", unsubscribe.channelIDs)
        }
    }

    /// Decodes the fields of a request of `type`, in the order the contract lists them.
    init(type: RequestType, reader r: FieldReader) throws(DecodeError) {
        switch type {
        case .signup:
            self = .signup(Signup(username: try r.string("username"), publicKey: try r.string("public_key")))
        case .login:
            self = .login(Login(username: try r.string("username"), passkey: try r.string("passkey")))
        case .challenge:
            self = .challenge(
                Challenge(
                    challengeID: try r.id("challenge_id"),
                    answer: try r.bytes("answer", count: Limits.digestBytes)))
        case .auth:
            self = .auth(Auth(session: try r.string("session")))
        case .logout:
            self = .logout
        case .user:
            let username = try r.optionalString("username")
            let userID = try r.optionalID("user_id")
            switch (username, userID) {
            case (let username?, nil): self = .user(.username(username))
            case (nil, let userID?): self = .user(.userID(userID))
            case (nil, nil):
                throw DecodeError(field: r.pathOf("username"), reason: "missing (give username or user_id)")
            case (_?, _?):
                throw DecodeError(field: r.pathOf("user_id"), reason: "give only one of username and user_id")
            }
        case .channelCreate:
            self = .channelCreate(
                ChannelCreate(
                    channelID: try r.id("channel_id"),
                    name: try r.string("name", scalars: Limits.channelNameLength),
                    membership: try MembershipStatement(reader: r.object("membership"))))
        case .channels:
            self = .channels
        case .channelMembers:
            self = .channelMembers(ChannelMembers(channelID: try r.id("channel_id")))
        case .channelMembership:
            self = .channelMembership(
                ChannelMembership(channelID: try r.id("channel_id"), afterVersion: try r.optionalInteger("after_version")))
        case .channelAdd, .channelRemove:
            let change = MembershipChange(
                channelID: try r.id("channel_id"),
                userID: try r.id("user_id"),
                membership: try MembershipStatement(reader: r.object("membership")))
            self = type == .channelAdd ? .channelAdd(change) : .channelRemove(change)
        case .key:
            self = .key(Key(channelID: try r.id("channel_id"), keyID: try r.optionalID("key_id")))
        case .keys:
            self = .keys(
                Keys(
                    channelID: try r.id("channel_id"),
                    keyID: try r.id("key_id"),
                    previousKeyID: try r.optionalID("previous_key_id"),
                    membershipVersion: try r.integer("membership_version"),
                    digest: try r.bytes("digest", count: Limits.digestBytes),
                    sig: try r.bytes("sig"),
                    encryptedKeys: try r.objects("encrypted_keys") { (e) throws(DecodeError) in
                        try WrappedKey(reader: e)
                    }))
        case .message:
            self = .message(
                Message(
                    channelID: try r.id("channel_id"),
                    keyID: try r.id("key_id"),
                    iv: try r.bytes("iv", count: Limits.ivBytes),
                    ciphertext: try r.bytes("ciphertext", minCount: Limits.minCiphertextBytes),
                    ts: try r.integer("ts"),
                    clientMsgID: try r.id("client_msg_id")))
        case .messages:
            let channelID = try r.id("channel_id")
            let after = try r.optionalInteger("after")
            let before = try r.optionalInteger("before")
            var limit: Int? = nil
            if r.present("limit") != nil {
                limit = try r.integer("limit", in: 1...Limits.historyMaxLimit)
            }
            self = .messages(Messages(channelID: channelID, after: after, before: before, limit: limit))
        case .subscribe:
            self = .subscribe(
                Subscribe(
                    channels: try r.objects("channels") { (e) throws(DecodeError) in
                        SubscribeChannel(channelID: try e.id("channel_id"), after: try e.optionalInteger("after"))
                    }))
        case .unsubscribe:
            self = .unsubscribe(Unsubscribe(channelIDs: try r.ids("channel_ids")))
        case .ping:
            self = .ping
        }
    }
}
