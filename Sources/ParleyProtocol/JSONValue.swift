// A JSON document tree that keeps what Foundation's parsers lose: whether a number was
// written as an integer, and the order of an object's keys.

/// A parsed JSON value.
///
/// Numbers written without a fraction or an exponent that fit in `Int64` are `.integer`;
/// every other number (`1.0`, `1e3`, `123456789012345678901234567890`) is `.number`.
/// `-0` parses as `.integer(0)`.
public enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case integer(Int64)
    /// A number written with a fraction or an exponent, or too large for `Int64`.
    /// Out-of-range magnitudes such as `1e400` become infinities (as in JavaScript).
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object(JSONObject)

    /// A short name of the value's kind, for error texts ("expected string, got array").
    public var kindName: String {
        switch self {
        case .null: return "null"
        case .bool: return "boolean"
        case .integer, .number: return "number"
        case .string: return "string"
        case .array: return "array"
        case .object: return "object"
        }
    }

    /// The compact UTF-8 encoding of this value.
    public func encoded() -> [UInt8] {
        var writer = JSONWriter()
        writer.value(self)
        return writer.bytes
    }
}

/// A JSON object: keys in the order they first appeared, duplicate keys resolved like
/// JavaScript's `JSON.parse` (the last value wins, the first position is kept).
///
/// Two objects are equal when they hold the same keys with equal values, in any order.
public struct JSONObject: Sendable, Equatable {
    /// Keys in first-appearance order, each once.
    public private(set) var keys: [String] = []
    private var storage: [String: JSONValue] = [:]

    /// An empty object.
    public init() {}

    /// An object from key/value pairs; a repeated key overwrites the earlier value.
    public init(_ pairs: [(String, JSONValue)]) {
        keys.reserveCapacity(pairs.count)
        storage.reserveCapacity(pairs.count)
        for (key, value) in pairs { self[key] = value }
    }

    /// The number of distinct keys.
    public var count: Int { keys.count }

    /// The value stored under `key`, or `nil` when absent. Setting `nil` removes the key.
    public subscript(key: String) -> JSONValue? {
        get { storage[key] }
        set {
            if let newValue {
                if storage.updateValue(newValue, forKey: key) == nil { keys.append(key) }
            } else if storage.removeValue(forKey: key) != nil {
                keys.removeAll { $0 == key }
            }
        }
    }

    /// Key/value pairs in key order.
    public var entries: [(key: String, value: JSONValue)] {
        keys.compactMap { key in storage[key].map { (key, $0) } }
    }

    public static func == (lhs: JSONObject, rhs: JSONObject) -> Bool {
        lhs.storage == rhs.storage
    }
}
