import ParleyEncoding
// Reading typed fields out of parsed JSON, with errors that name the offending field by
// its path (`membership.members[2]`, `encrypted_keys[0].user_id`).

/// A field that did not decode as the contract specifies.
public struct DecodeError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Path of the field, e.g. `iv` or `membership.members[1]`; empty for the frame itself.
    public let field: String
    /// What is wrong: "missing", "expected string", "not a lowercase UUID", "not base64",
    /// "expected 12 bytes", "out of range", ...
    public let reason: String

    public init(field: String, reason: String) {
        self.field = field
        self.reason = reason
    }

    public var description: String { field.isEmpty ? reason : "\(field): \(reason)" }
}

/// Typed access to the fields of one JSON object. `null` reads as absent everywhere:
/// an optional field given `null` is nil, a required one given `null` is "missing".
public struct FieldReader: Sendable {
    /// The object being read.
    public let object: JSONObject
    /// The path of this object inside the frame; empty at the top level.
    public let path: String

    public init(_ object: JSONObject, path: String = "") {
        self.object = object
        self.path = path
    }

    /// Reads the top-level object of a JSON value, or throws naming `path`.
    public init(_ value: JSONValue, path: String = "") throws(DecodeError) {
        guard case .object(let object) = value else {
            throw DecodeError(field: path, reason: "expected object")
        }
        self.init(object, path: path)
    }

    /// The full path of a field of this object.
    public func pathOf(_ key: String) -> String {
        path.isEmpty ? key : path + "." + key
    }

    /// The value of `key`, nil when missing or `null`.
    public func present(_ key: String) -> JSONValue? {
        switch object[key] {
        case nil, .null?: return nil
        case let value?: return value
        }
    }

    private func required(_ key: String) throws(DecodeError) -> JSONValue {
        guard let value = present(key) else { throw DecodeError(field: pathOf(key), reason: "missing") }
        return value
    }

    // MARK: Required fields

    /// A string field.
    public func string(_ key: String) throws(DecodeError) -> String {
        try JSONField.string(required(key), path: pathOf(key))
    }

    /// A string of `scalars` Unicode scalar values.
    public func string(_ key: String, scalars: ClosedRange<Int>) throws(DecodeError) -> String {
        let text = try string(key)
        let count = text.unicodeScalars.count
        guard scalars.contains(count) else {
            throw DecodeError(
                field: pathOf(key),
                reason: "expected \(scalars.lowerBound) to \(scalars.upperBound) characters")
        }
        return text
    }

    /// An integer field (a JSON number without fraction or exponent in 0...2^53−1).
    public func integer(_ key: String) throws(DecodeError) -> Int {
        try JSONField.integer(required(key), path: pathOf(key))
    }

    /// An integer field restricted to `range`.
    public func integer(_ key: String, in range: ClosedRange<Int>) throws(DecodeError) -> Int {
        let value = try integer(key)
        guard range.contains(value) else { throw DecodeError(field: pathOf(key), reason: "out of range") }
        return value
    }

    /// A boolean field.
    public func bool(_ key: String) throws(DecodeError) -> Bool {
        try JSONField.bool(required(key), path: pathOf(key))
    }

    /// A lowercase UUID field.
    public func id(_ key: String) throws(DecodeError) -> ID {
        try JSONField.id(required(key), path: pathOf(key))
    }

    /// A base64 field, decoded, with an optional exact or minimum length.
    public func bytes(_ key: String, count: Int? = nil, minCount: Int? = nil) throws(DecodeError) -> [UInt8] {
        try JSONField.bytes(required(key), path: pathOf(key), count: count, minCount: minCount)
    }

    /// A nested object field.
    public func object(_ key: String) throws(DecodeError) -> FieldReader {
        try FieldReader(required(key), path: pathOf(key))
    }

    /// An array field.
    public func array(_ key: String) throws(DecodeError) -> ArrayReader {
        let value = try required(key)
        guard case .array(let elements) = value else {
            throw DecodeError(field: pathOf(key), reason: "expected array")
        }
        return ArrayReader(elements: elements, path: pathOf(key))
    }

    /// An array of lowercase UUIDs.
    public func ids(_ key: String) throws(DecodeError) -> [ID] {
        try array(key).map { (value, path) throws(DecodeError) -> ID in try JSONField.id(value, path: path) }
    }

    /// An array of objects, each decoded by `body`.
    public func objects<T>(_ key: String, _ body: (FieldReader) throws(DecodeError) -> T) throws(DecodeError) -> [T] {
        try array(key).map { (value, path) throws(DecodeError) -> T in try body(FieldReader(value, path: path)) }
    }

    // MARK: Optional fields (missing or null = nil)

    /// A string field that may be absent.
    public func optionalString(_ key: String) throws(DecodeError) -> String? {
        guard let value = present(key) else { return nil }
        return try JSONField.string(value, path: pathOf(key))
    }

    /// An integer field that may be absent.
    public func optionalInteger(_ key: String) throws(DecodeError) -> Int? {
        guard let value = present(key) else { return nil }
        return try JSONField.integer(value, path: pathOf(key))
    }

    /// A boolean field that may be absent.
    public func optionalBool(_ key: String) throws(DecodeError) -> Bool? {
        guard let value = present(key) else { return nil }
        return try JSONField.bool(value, path: pathOf(key))
    }

    /// A lowercase UUID field that may be absent or null.
    public func optionalID(_ key: String) throws(DecodeError) -> ID? {
        guard let value = present(key) else { return nil }
        return try JSONField.id(value, path: pathOf(key))
    }

    /// A base64 field that may be absent or null.
    public func optionalBytes(_ key: String) throws(DecodeError) -> [UInt8]? {
        guard let value = present(key) else { return nil }
        return try JSONField.bytes(value, path: pathOf(key), count: nil, minCount: nil)
    }

    /// An array of lowercase UUIDs that may be absent.
    public func optionalIDs(_ key: String) throws(DecodeError) -> [ID]? {
        guard present(key) != nil else { return nil }
        return try ids(key)
    }
}

/// The elements of a JSON array with their paths (`name[0]`, `name[1]`, ...).
public struct ArrayReader: Sendable {
    public let elements: [JSONValue]
    public let path: String

    /// The path of element `index`.
    public func pathOf(_ index: Int) -> String { "\(path)[\(index)]" }

    /// Decodes every element in order; the first failure names its element.
    public func map<T>(_ body: (JSONValue, String) throws(DecodeError) -> T) throws(DecodeError) -> [T] {
        var result: [T] = []
        result.reserveCapacity(elements.count)
        for (index, element) in elements.enumerated() {
            result.append(try body(element, pathOf(index)))
        }
        return result
    }
}

/// Decoding of single JSON values under the contract's rules.
public enum JSONField {
    /// The largest integer the contract allows: 2^53 − 1.
    public static let maxInteger = 9_007_199_254_740_991

    public static func string(_ value: JSONValue, path: String) throws(DecodeError) -> String {
        guard case .string(let text) = value else { throw DecodeError(field: path, reason: "expected string") }
        return text
    }

    /// A JSON number without fraction or exponent in 0...2^53−1. Booleans are not numbers.
    public static func integer(_ value: JSONValue, path: String) throws(DecodeError) -> Int {
        switch value {
        case .integer(let integer):
            guard integer >= 0 && integer <= Int64(maxInteger) else {
                throw DecodeError(field: path, reason: "out of range")
            }
            return Int(integer)
        case .number:
            throw DecodeError(field: path, reason: "expected integer")
        default:
            throw DecodeError(field: path, reason: "expected integer")
        }
    }

    public static func bool(_ value: JSONValue, path: String) throws(DecodeError) -> Bool {
        guard case .bool(let flag) = value else { throw DecodeError(field: path, reason: "expected boolean") }
        return flag
    }

    public static func id(_ value: JSONValue, path: String) throws(DecodeError) -> ID {
        let text = try string(value, path: path)
        guard let id = ID(text) else { throw DecodeError(field: path, reason: "not a lowercase UUID") }
        return id
    }

    public static func bytes(
        _ value: JSONValue, path: String, count: Int?, minCount: Int?
    ) throws(DecodeError) -> [UInt8] {
        let text = try string(value, path: path)
        guard let data = try? Base64.decode(text) else { throw DecodeError(field: path, reason: "not base64") }
        if let count, data.count != count {
            throw DecodeError(field: path, reason: "expected \(count) bytes")
        }
        if let minCount, data.count < minCount {
            throw DecodeError(field: path, reason: "expected at least \(minCount) bytes")
        }
        return data
    }
}
