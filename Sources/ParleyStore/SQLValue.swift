import Foundation

/// A value bound to a query parameter. SQL text is never built from values: every value
/// travels as a bind parameter, so no input can change the statement.
public enum SQLValue: Sendable, Hashable {
    case null
    case text(String)
    /// Sent in binary format: the bytes arrive as they are, no escaping.
    case bytes([UInt8])
    case integer(Int64)
    case boolean(Bool)

    public static func uuid(_ value: UUID) -> SQLValue {
        .text(value.uuidString.lowercased())
    }

    public static func uuid(_ value: UUID?) -> SQLValue {
        value.map { .uuid($0) } ?? .null
    }

    public static func int(_ value: Int) -> SQLValue {
        .integer(Int64(value))
    }

    /// A PostgreSQL array literal of text-like elements (uuid[], text[]), each quoted.
    public static func array(_ elements: [String]) -> SQLValue {
        var literal = "{"
        for (index, element) in elements.enumerated() {
            if index > 0 { literal += "," }
            literal += "\""
            for scalar in element.unicodeScalars {
                if scalar == "\"" || scalar == "\\" { literal += "\\" }
                literal.unicodeScalars.append(scalar)
            }
            literal += "\""
        }
        return .text(literal + "}")
    }

    public static func uuidArray(_ values: [UUID]) -> SQLValue {
        array(values.map { $0.uuidString.lowercased() })
    }

    /// A PostgreSQL array literal of integers (cast the parameter `::bigint[]`).
    public static func integerArray(_ values: [Int]) -> SQLValue {
        .text("{" + values.map(String.init).joined(separator: ",") + "}")
    }

    /// A bytea[] in PostgreSQL's binary array format (cast the parameter `::bytea[]`): each
    /// element travels as it is — no hex, no escaping — which matters for 64 KiB ciphertexts.
    public static func byteaArray(_ elements: [[UInt8]]) -> SQLValue {
        var out: [UInt8] = []
        out.reserveCapacity(20 + elements.reduce(0) { $0 + 4 + $1.count })
        func int32(_ value: Int) { withUnsafeBytes(of: Int32(value).bigEndian) { out.append(contentsOf: $0) } }
        let byteaOID = 17
        int32(elements.isEmpty ? 0 : 1)     // dimensions
        int32(0)                            // no NULL elements
        int32(byteaOID)
        if !elements.isEmpty {
            int32(elements.count)           // length of the one dimension
            int32(1)                        // its lower bound
        }
        for element in elements {
            int32(element.count)
            out.append(contentsOf: element)
        }
        return .bytes(out)
    }

    /// The wire form libpq takes: the bytes (text formats NUL-terminated) and the format flag.
    /// Text with a NUL inside is refused: libpq would cut it there, so `"alice\0x"` would
    /// silently become `"alice"` (PostgreSQL text cannot hold NUL anyway).
    func wire() throws -> (bytes: [UInt8]?, binary: Bool) {
        switch self {
        case .null: return (nil, false)
        case .text(let string):
            let bytes = Array(string.utf8)
            guard !bytes.contains(0) else {
                throw StoreError(.queryFailed, sqlState: "22021", detail: "a text parameter contains a NUL character")
            }
            return (bytes + [0], false)
        case .bytes(let bytes): return (bytes, true)
        case .integer(let number): return (Array(String(number).utf8) + [0], false)
        case .boolean(let flag): return (Array((flag ? "t" : "f").utf8) + [0], false)
        }
    }
}

extension SQLValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByNilLiteral {
    public init(stringLiteral value: String) { self = .text(value) }
    public init(integerLiteral value: Int64) { self = .integer(value) }
    public init(nilLiteral: ()) { self = .null }
}

/// A statement prepared once per connection, the first time that connection runs it.
public struct PreparedStatement: Hashable, Sendable {
    public let name: String
    public let sql: String

    public init(_ name: String, _ sql: String) {
        self.name = name
        self.sql = sql
    }
}
