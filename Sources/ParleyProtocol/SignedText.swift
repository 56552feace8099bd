import ParleyEncoding
// The exact byte strings that are signed or hashed. Signers and verifiers on every
// platform must produce identical bytes, so each text is built in exactly one place.

/// Canonical texts of the contract, as UTF-8 bytes.
public enum SignedText {
    /// `${body}:${channel_id}:${ts}` — signed inside the message plaintext (§7).
    public static func message(body: String, channelID: ID, ts: Int) -> [UInt8] {
        Array("\(body):\(channelID.string):\(ts)".utf8)
    }

    /// `parley.membership.v1:${channel_id}:${version}:${prev}:${ts}:${owner_id}:${members}`
    /// with `prev` in base64 (empty for version 1), `owner_id` empty when there is none,
    /// and `members` sorted ascending and joined with commas (§5).
    public static func membership(
        channelID: ID, version: Int, prev: [UInt8], ts: Int, ownerID: ID?, members: [ID]
    ) -> [UInt8] {
        var text = ProtocolConstants.membershipPrefix
        text += channelID.string
        text += ":\(version):"
        text += Base64.encode(prev)
        text += ":\(ts):"
        text += ownerID?.string ?? ""
        text += ":"
        text += members.sorted().map(\.string).joined(separator: ",")
        return Array(text.utf8)
    }

    /// `parley.key.v1:${channel_id}:${key_id}:${previous_key_id or empty}:${membership_version}:${digest}`
    /// with `digest` in base64 (§6).
    public static func keyRecord(
        channelID: ID, keyID: ID, previousKeyID: ID?, membershipVersion: Int, digest: [UInt8]
    ) -> [UInt8] {
        var text = ProtocolConstants.keyPrefix
        text += "\(channelID.string):\(keyID.string):\(previousKeyID?.string ?? ""):\(membershipVersion):"
        text += Base64.encode(digest)
        return Array(text.utf8)
    }

    /// The input to the challenge answer's SHA-256: the 20 ASCII bytes
    /// `parley.challenge.v1:` followed by the decrypted 32-byte secret (§4).
    public static func challengeAnswerInput(secret: [UInt8]) -> [UInt8] {
        Array(ProtocolConstants.challengePrefix.utf8) + secret
    }
}

/// The AES-GCM plaintext of a message: UTF-8 JSON `{"body","sig"}` (§7). Other fields
/// are ignored when decoding.
public struct MessagePlaintext: Sendable, Equatable {
    public var body: String
    /// RSA-PSS signature over `SignedText.message(body:channelID:ts:)`.
    public var sig: [UInt8]

    public init(body: String, sig: [UInt8]) {
        self.body = body
        self.sig = sig
    }

    /// The plaintext bytes to encrypt.
    public func encode() -> [UInt8] {
        var writer = JSONWriter(capacity: body.utf8.count + sig.count * 4 / 3 + 32)
        writer.beginObject()
        writer.field("body", body)
        writer.base64Field("sig", sig)
        writer.endObject()
        return writer.bytes
    }

    /// Decodes decrypted plaintext bytes.
    public static func decode(_ bytes: [UInt8]) throws(DecodeError) -> MessagePlaintext {
        let json: JSONValue
        do throws(JSONParseError) {
            json = try JSONParser.parse(bytes)
        } catch {
            throw DecodeError(field: "", reason: "not JSON: \(error)")
        }
        let reader = try FieldReader(json)
        return MessagePlaintext(body: try reader.string("body"), sig: try reader.bytes("sig"))
    }
}
