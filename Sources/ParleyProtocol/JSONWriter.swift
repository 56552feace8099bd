import ParleyEncoding
// A compact JSON writer that appends straight into a byte buffer. Frames are written
// field by field from their Swift types, without building a JSONValue tree first: the
// server encodes every event once and hands the same bytes to many subscribers.

/// Writes compact JSON into `bytes`. Commas are inserted automatically: call `key(_:)`
/// before each value inside an object, and nothing before values inside an array.
public struct JSONWriter: Sendable {
    /// The output written so far.
    public var bytes: [UInt8]
    private var needsComma = false

    /// A writer with an empty buffer of the given capacity.
    public init(capacity: Int = 256) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    /// A writer that appends to an existing buffer (e.g. one that starts with headroom
    /// the transport needs in front of the payload).
    public init(appendingTo buffer: [UInt8]) {
        bytes = buffer
    }

    @inline(__always) private mutating func separate() {
        if needsComma { bytes.append(0x2C) }
    }

    // MARK: Structure

    /// Writes `{`.
    public mutating func beginObject() {
        separate()
        bytes.append(0x7B)
        needsComma = false
    }

    /// Writes `}`.
    public mutating func endObject() {
        bytes.append(0x7D)
        needsComma = true
    }

    /// Writes `[`.
    public mutating func beginArray() {
        separate()
        bytes.append(0x5B)
        needsComma = false
    }

    /// Writes `]`.
    public mutating func endArray() {
        bytes.append(0x5D)
        needsComma = true
    }

    /// Writes an object key known at compile time. The key must be plain ASCII that
    /// needs no escaping (true of every field name in the contract).
    public mutating func key(_ name: StaticString) {
        separate()
        bytes.append(0x22)
        name.withUTF8Buffer { bytes.append(contentsOf: $0) }
        bytes.append(0x22)
        bytes.append(0x3A)
        needsComma = false
    }

    /// Writes an arbitrary object key, escaped as needed.
    public mutating func key(_ name: String) {
        separate()
        appendQuoted(name)
        bytes.append(0x3A)
        needsComma = false
    }

    // MARK: Scalars

    /// Writes `null`.
    public mutating func null() {
        separate()
        bytes.append(contentsOf: [0x6E, 0x75, 0x6C, 0x6C])
        needsComma = true
    }

    /// Writes `true` or `false`.
    public mutating func value(_ flag: Bool) {
        separate()
        if flag {
            bytes.append(contentsOf: [0x74, 0x72, 0x75, 0x65])
        } else {
            bytes.append(contentsOf: [0x66, 0x61, 0x6C, 0x73, 0x65])
        }
        needsComma = true
    }

    /// Writes an integer exactly.
    public mutating func value(_ integer: Int) {
        value(Int64(integer))
    }

    /// Writes an integer exactly.
    public mutating func value(_ integer: Int64) {
        separate()
        var magnitude = integer.magnitude
        if integer < 0 { bytes.append(0x2D) }
        let start = bytes.count
        repeat {
            bytes.append(0x30 + UInt8(magnitude % 10))
            magnitude /= 10
        } while magnitude != 0
        bytes[start...].reverse()
        needsComma = true
    }

    /// Writes a floating-point number in its shortest round-tripping form; non-finite
    /// values are written as `null`, as JavaScript's `JSON.stringify` does.
    public mutating func value(_ number: Double) {
        guard number.isFinite else {
            null()
            return
        }
        separate()
        bytes.append(contentsOf: number.description.utf8)
        needsComma = true
    }

    /// Writes a string, escaping `"`, `\` and control characters.
    public mutating func value(_ string: String) {
        separate()
        appendQuoted(string)
        needsComma = true
    }

    /// Writes bytes as a standard padded base64 string.
    public mutating func base64(_ data: [UInt8]) {
        separate()
        bytes.append(0x22)
        Base64.encode(data, into: &bytes)
        bytes.append(0x22)
        needsComma = true
    }

    /// Writes an id as its canonical lowercase string.
    public mutating func value(_ id: ID) {
        separate()
        bytes.append(0x22)
        bytes.append(contentsOf: id.string.utf8)
        bytes.append(0x22)
        needsComma = true
    }

    /// Writes a whole JSON value.
    public mutating func value(_ json: JSONValue) {
        switch json {
        case .null: null()
        case .bool(let flag): value(flag)
        case .integer(let integer): value(integer)
        case .number(let number): value(number)
        case .string(let string): value(string)
        case .array(let elements):
            beginArray()
            for element in elements { value(element) }
            endArray()
        case .object(let object):
            beginObject()
            for (name, member) in object.entries {
                key(name)
                value(member)
            }
            endObject()
        }
    }

    // MARK: Fields (key + value)

    /// Writes `"name":"value"`.
    public mutating func field(_ name: StaticString, _ string: String) {
        key(name)
        value(string)
    }

    /// Writes `"name":integer`.
    public mutating func field(_ name: StaticString, _ integer: Int) {
        key(name)
        value(integer)
    }

    /// Writes `"name":true|false`.
    public mutating func field(_ name: StaticString, _ flag: Bool) {
        key(name)
        value(flag)
    }

    /// Writes `"name":"<id>"`.
    public mutating func field(_ name: StaticString, _ id: ID) {
        key(name)
        value(id)
    }

    /// Writes `"name":"<id>"`, or `"name":null` when `id` is nil (the key is always present).
    public mutating func nullableField(_ name: StaticString, _ id: ID?) {
        key(name)
        if let id { value(id) } else { null() }
    }

    /// Writes `"name":"<base64>"`.
    public mutating func base64Field(_ name: StaticString, _ data: [UInt8]) {
        key(name)
        base64(data)
    }

    /// Writes `"name":["<id>",...]`.
    public mutating func idArrayField(_ name: StaticString, _ ids: [ID]) {
        key(name)
        beginArray()
        for id in ids { value(id) }
        endArray()
    }

    // MARK: Escaping

    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    private mutating func appendQuoted(_ string: String) {
        bytes.append(0x22)
        var string = string
        string.withUTF8 { utf8 in
            var runStart = 0
            var index = 0
            let count = utf8.count
            while index < count {
                let byte = utf8[index]
                if byte >= 0x20 && byte != 0x22 && byte != 0x5C {
                    index += 1
                    continue
                }
                if runStart < index {
                    bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[runStart..<index]))
                }
                bytes.append(0x5C)
                switch byte {
                case 0x22: bytes.append(0x22)
                case 0x5C: bytes.append(0x5C)
                case 0x0A: bytes.append(UInt8(ascii: "n"))
                case 0x0D: bytes.append(UInt8(ascii: "r"))
                case 0x09: bytes.append(UInt8(ascii: "t"))
                case 0x08: bytes.append(UInt8(ascii: "b"))
                case 0x0C: bytes.append(UInt8(ascii: "f"))
                default:
                    bytes.append(contentsOf: [UInt8(ascii: "u"), 0x30, 0x30])
                    bytes.append(Self.hexDigits[Int(byte >> 4)])
                    bytes.append(Self.hexDigits[Int(byte & 0x0F)])
                }
                index += 1
                runStart = index
            }
            if runStart < count {
                bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[runStart..<count]))
            }
        }
        bytes.append(0x22)
    }
}

/// A frame that writes itself as one JSON object.
public protocol FrameEncodable {
    /// Writes the frame into `writer` (which may already hold `LWS_PRE` headroom).
    func encode(into writer: inout JSONWriter)
}

extension FrameEncodable {
    /// The frame's bytes, encoded once (a fan-out shares them among subscribers).
    public func encode() -> [UInt8] {
        var writer = JSONWriter(capacity: 256)
        encode(into: &writer)
        return writer.bytes
    }
}
