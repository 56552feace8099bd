/// The error codes of the contract (§3), and nothing else.
public enum ErrorCode: String, Sendable, CaseIterable {
    case badRequest = "bad_request"
    case unknownType = "unknown_type"
    case unauthenticated
    case authFailed = "auth_failed"
    case forbidden
    case notMember = "not_member"
    case notFound = "not_found"
    case invalidUsername = "invalid_username"
    case usernameTaken = "username_taken"
    case invalidKey = "invalid_key"
    case challengeFailed = "challenge_failed"
    case keyConflict = "key_conflict"
    case membersMismatch = "members_mismatch"
    case keyExpired = "key_expired"
    case badTimestamp = "bad_timestamp"
    case tooLarge = "too_large"
    case rateLimited = "rate_limited"
    case unavailable
    case `internal`

    /// Codes whose frame always carries `current_key_id` (null when the channel has no key).
    public var carriesCurrentKeyID: Bool { self == .keyConflict || self == .keyExpired }

    /// Codes after which the request was not applied and may be retried as is.
    public var isRetryable: Bool { self == .rateLimited || self == .unavailable || self == .internal }
}

/// `{"re","type":"error","code","message",...}`.
///
/// `current_key_id` is written whenever the code is `key_conflict` or `key_expired`
/// (as `null` when `currentKeyID` is nil), and for other codes only when set.
/// The other optional fields are written only when set.
public struct ErrorFrame: Sendable, Equatable, Error, FrameEncodable {
    /// The request id, or nil when it could not be read.
    public var re: String?
    public var code: ErrorCode
    /// Human-readable text; for `bad_request` it names the field.
    public var message: String
    /// Present on `rate_limited` and `unavailable`, optionally on `internal`.
    public var retryAfterMs: Int?
    /// The channel's newest key id on `key_conflict` / `key_expired`.
    public var currentKeyID: ID?
    /// The expected members on `members_mismatch`.
    public var members: [ID]?
    /// The current membership version on `members_mismatch`.
    public var membershipVersion: Int?

    public init(
        re: String?, code: ErrorCode, message: String, retryAfterMs: Int? = nil,
        currentKeyID: ID? = nil, members: [ID]? = nil, membershipVersion: Int? = nil
    ) {
        self.re = re
        self.code = code
        self.message = message
        self.retryAfterMs = retryAfterMs
        self.currentKeyID = currentKeyID
        self.members = members
        self.membershipVersion = membershipVersion
    }

    /// A `members_mismatch` error with the expected members (written sorted).
    public static func membersMismatch(re: String?, members: [ID], membershipVersion: Int, message: String = "members do not match the current membership") -> ErrorFrame {
        ErrorFrame(re: re, code: .membersMismatch, message: message, members: members.sorted(), membershipVersion: membershipVersion)
    }


    /// Writes the frame.
    public func encode(into writer: inout JSONWriter) {
        writer.beginObject()
        writer.key("re")
        if let re { writer.value(re) } else { writer.null() }
        writer.field("type", "error")
        writer.field("code", code.rawValue)
        writer.field("message", message)
        if let retryAfterMs { writer.field("retry_after_ms", retryAfterMs) }
        if code.carriesCurrentKeyID || currentKeyID != nil {
            writer.nullableField("current_key_id", currentKeyID)
        }
        if let members { writer.idArrayField("members", members) }
        if let membershipVersion { writer.field("membership_version", membershipVersion) }
        writer.endObject()
    }

    /// Reads an error frame (its `type` already known to be `error`).
    public init(reader: FieldReader) throws(DecodeError) {
        re = try reader.optionalString("re")
        let codeText = try reader.string("code")
        guard let code = ErrorCode(rawValue: codeText) else {
            throw DecodeError(field: reader.pathOf("code"), reason: "unknown error code")
        }
        self.code = code
        message = try reader.string("message")
        retryAfterMs = try reader.optionalInteger("retry_after_ms")
        currentKeyID = try reader.optionalID("current_key_id")
        members = try reader.optionalIDs("members")
        membershipVersion = try reader.optionalInteger("membership_version")
    }
}
