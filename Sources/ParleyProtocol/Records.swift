// Objects that appear inside several frames: membership statements, members, key
// records, stored messages and channel summaries.

/// A member's role in a channel.
public enum Role: String, Sendable, CaseIterable {
    case owner
    case member
}

/// One link of a channel's signed membership chain (§5).
///
/// `members` is kept sorted ascending (as strings), which is how it is signed, stored
/// and returned. Exactly the §5 fields are encoded; unknown fields are dropped on decode.
public struct MembershipStatement: Sendable, Equatable {
    public var version: Int
    /// SHA-256 of the previous version's signed text; empty for version 1.
    public var prev: [UInt8]
    /// Unix seconds.
    public var ts: Int
    /// The owner, or nil for the closing statement of a channel whose last member left
    /// (encoded as the empty string).
    public var ownerID: ID?
    /// Member ids, sorted ascending; the owner included.
    public var members: [ID] { didSet { members.sort() } }
    public var signerID: ID
    /// RSA-PSS signature over `signedText(channelID:)`.
    public var sig: [UInt8]

    public init(version: Int, prev: [UInt8], ts: Int, ownerID: ID?, members: [ID], signerID: ID, sig: [UInt8]) {
        self.version = version
        self.prev = prev
        self.ts = ts
        self.ownerID = ownerID
        self.members = members.sorted()
        self.signerID = signerID
        self.sig = sig
    }

    /// The text `signerID` signs for this statement on `channelID`.
    public func signedText(channelID: ID) -> [UInt8] {
        SignedText.membership(
            channelID: channelID, version: version, prev: prev, ts: ts, ownerID: ownerID, members: members)
    }

    public init(reader: FieldReader) throws(DecodeError) {
        version = try reader.integer("version")
        prev = try reader.bytes("prev")
        if !(prev.isEmpty || prev.count == Limits.digestBytes) {
            throw DecodeError(field: reader.pathOf("prev"), reason: "expected 32 bytes or empty")
        }
        ts = try reader.integer("ts")
        let owner = try reader.string("owner_id")
        if owner.isEmpty {
            ownerID = nil
        } else if let id = ID(owner) {
            ownerID = id
        } else {
            throw DecodeError(field: reader.pathOf("owner_id"), reason: "not a lowercase UUID or empty")
        }
        members = try reader.ids("members").sorted()
        signerID = try reader.id("signer_id")
        sig = try reader.bytes("sig")
    }

    public func encode(into writer: inout JSONWriter) {
        writer.beginObject()
        writer.field("version", version)
        writer.base64Field("prev", prev)
        writer.field("ts", ts)
        writer.field("owner_id", ownerID?.string ?? "")
        writer.idArrayField("members", members)
        writer.field("signer_id", signerID)
        writer.base64Field("sig", sig)
        writer.endObject()
    }
}

/// `member` = `{"user_id","username","public_key","role","joined_at"}`.
public struct Member: Sendable, Equatable {
    public var userID: ID
    public var username: String
    /// DER SubjectPublicKeyInfo (base64 on the wire).
    public var publicKey: [UInt8]
    public var role: Role
    /// Unix milliseconds.
    public var joinedAt: Int

    public init(userID: ID, username: String, publicKey: [UInt8], role: Role, joinedAt: Int) {
        self.userID = userID
        self.username = username
        self.publicKey = publicKey
        self.role = role
        self.joinedAt = joinedAt
    }

    public init(reader: FieldReader) throws(DecodeError) {
        userID = try reader.id("user_id")
        username = try reader.string("username")
        publicKey = try reader.bytes("public_key")
        role = try readRole(reader, "role")
        joinedAt = try reader.integer("joined_at")
    }

    public func encode(into writer: inout JSONWriter) {
        writer.beginObject()
        writer.field("user_id", userID)
        writer.field("username", username)
        writer.base64Field("public_key", publicKey)
        writer.field("role", role.rawValue)
        writer.field("joined_at", joinedAt)
        writer.endObject()
    }
}

func readRole(_ reader: FieldReader, _ key: String) throws(DecodeError) -> Role {
    guard let role = Role(rawValue: try reader.string(key)) else {
        throw DecodeError(field: reader.pathOf(key), reason: "expected \"owner\" or \"member\"")
    }
    return role
}

/// A channel key record (§6), as returned by `key` and sent as `event.key`.
public struct KeyRecord: Sendable, Equatable {
    public var keyID: ID
    public var channelID: ID
    public var creatorID: ID
    /// Always written, as `null` for a channel's first key.
    public var previousKeyID: ID?
    public var membershipVersion: Int
    /// SHA-256 of the raw 32-byte key.
    public var digest: [UInt8]
    /// RSA-PSS signature by the creator over `signedText`.
    public var sig: [UInt8]
    /// Unix milliseconds.
    public var createdAt: Int
    /// Unix milliseconds.
    public var expiresAt: Int
    /// The recipient's own wrapped copy; nil (written as `null`) when it holds none.
    public var encryptedKey: [UInt8]?

    public init(
        keyID: ID, channelID: ID, creatorID: ID, previousKeyID: ID?, membershipVersion: Int,
        digest: [UInt8], sig: [UInt8], createdAt: Int, expiresAt: Int, encryptedKey: [UInt8]?
    ) {
        self.keyID = keyID
        self.channelID = channelID
        self.creatorID = creatorID
        self.previousKeyID = previousKeyID
        self.membershipVersion = membershipVersion
        self.digest = digest
        self.sig = sig
        self.createdAt = createdAt
        self.expiresAt = expiresAt
        self.encryptedKey = encryptedKey
    }

    /// The text the creator signed.
    public var signedText: [UInt8] {
        SignedText.keyRecord(
            channelID: channelID, keyID: keyID, previousKeyID: previousKeyID,
            membershipVersion: membershipVersion, digest: digest)
    }

    public init(reader: FieldReader) throws(DecodeError) {
        keyID = try reader.id("key_id")
        channelID = try reader.id("channel_id")
        creatorID = try reader.id("creator_id")
        previousKeyID = try reader.optionalID("previous_key_id")
        membershipVersion = try reader.integer("membership_version")
        digest = try reader.bytes("digest", count: Limits.digestBytes)
        sig = try reader.bytes("sig")
        createdAt = try reader.integer("created_at")
        expiresAt = try reader.integer("expires_at")
        encryptedKey = try reader.optionalBytes("encrypted_key")
    }

    /// Writes the record's fields (without braces), so events can add their `type`.
    public func encodeFields(into writer: inout JSONWriter) {
        writer.field("key_id", keyID)
        writer.field("channel_id", channelID)
        writer.field("creator_id", creatorID)
        writer.nullableField("previous_key_id", previousKeyID)
        writer.field("membership_version", membershipVersion)
        writer.base64Field("digest", digest)
        writer.base64Field("sig", sig)
        writer.field("created_at", createdAt)
        writer.field("expires_at", expiresAt)
        writer.key("encrypted_key")
        if let encryptedKey { writer.base64(encryptedKey) } else { writer.null() }
    }

    public func encode(into writer: inout JSONWriter) {
        writer.beginObject()
        encodeFields(into: &writer)
        writer.endObject()
    }
}

/// A stored message, in history and in `event.message` (§7).
public struct MessageRecord: Sendable, Equatable {
    public var channelID: ID
    public var seq: Int
    public var senderID: ID
    public var keyID: ID
    /// 12 bytes.
    public var iv: [UInt8]
    /// AES-GCM ciphertext with the 16-byte tag appended.
    public var ciphertext: [UInt8]
    /// Unix seconds, as sent and signed.
    public var ts: Int
    /// Unix milliseconds.
    public var receivedAt: Int

    public init(
        channelID: ID, seq: Int, senderID: ID, keyID: ID, iv: [UInt8], ciphertext: [UInt8], ts: Int, receivedAt: Int
    ) {
        self.channelID = channelID
        self.seq = seq
        self.senderID = senderID
        self.keyID = keyID
        self.iv = iv
        self.ciphertext = ciphertext
        self.ts = ts
        self.receivedAt = receivedAt
    }

    public init(reader: FieldReader) throws(DecodeError) {
        channelID = try reader.id("channel_id")
        seq = try reader.integer("seq")
        senderID = try reader.id("sender_id")
        keyID = try reader.id("key_id")
        iv = try reader.bytes("iv", count: Limits.ivBytes)
        ciphertext = try reader.bytes("ciphertext", minCount: Limits.minCiphertextBytes)
        ts = try reader.integer("ts")
        receivedAt = try reader.integer("received_at")
    }

    /// Writes the message's fields (without braces), so events can add their `type`.
    public func encodeFields(into writer: inout JSONWriter) {
        writer.field("channel_id", channelID)
        writer.field("seq", seq)
        writer.field("sender_id", senderID)
        writer.field("key_id", keyID)
        writer.base64Field("iv", iv)
        writer.base64Field("ciphertext", ciphertext)
        writer.field("ts", ts)
        writer.field("received_at", receivedAt)
    }

    public func encode(into writer: inout JSONWriter) {
        writer.beginObject()
        encodeFields(into: &writer)
        writer.endObject()
    }
}

/// One entry of the `channels` result.
public struct ChannelSummary: Sendable, Equatable {
    public var channelID: ID
    public var name: String
    public var role: Role
    /// 0 when the channel has no messages.
    public var lastSeq: Int
    /// The newest key's id, or nil (written as `null`) when the channel has none.
    public var keyID: ID?
    public var membershipVersion: Int

    public init(channelID: ID, name: String, role: Role, lastSeq: Int, keyID: ID?, membershipVersion: Int) {
        self.channelID = channelID
        self.name = name
        self.role = role
        self.lastSeq = lastSeq
        self.keyID = keyID
        self.membershipVersion = membershipVersion
    }

    public init(reader: FieldReader) throws(DecodeError) {
        channelID = try reader.id("channel_id")
        name = try reader.string("name")
        role = try readRole(reader, "role")
        lastSeq = try reader.integer("last_seq")
        keyID = try reader.optionalID("key_id")
        membershipVersion = try reader.integer("membership_version")
    }

    public func encode(into writer: inout JSONWriter) {
        writer.beginObject()
        writer.field("channel_id", channelID)
        writer.field("name", name)
        writer.field("role", role.rawValue)
        writer.field("last_seq", lastSeq)
        writer.nullableField("key_id", keyID)
        writer.field("membership_version", membershipVersion)
        writer.endObject()
    }
}

/// One member's wrapped copy of a new channel key, in a `keys` request.
public struct WrappedKey: Sendable, Equatable {
    public var userID: ID
    /// RSA-OAEP ciphertext of the 32-byte key; as long as the member's modulus.
    public var encryptedKey: [UInt8]

    public init(userID: ID, encryptedKey: [UInt8]) {
        self.userID = userID
        self.encryptedKey = encryptedKey
    }

    public init(reader: FieldReader) throws(DecodeError) {
        userID = try reader.id("user_id")
        encryptedKey = try reader.bytes("encrypted_key")
    }

    public func encode(into writer: inout JSONWriter) {
        writer.beginObject()
        writer.field("user_id", userID)
        writer.base64Field("encrypted_key", encryptedKey)
        writer.endObject()
    }
}
